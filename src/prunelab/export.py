"""``python -m prunelab.export run=<run dir> format=onnx [compact=true] [quantize=int8]``.

See :mod:`prunelab.deploy`."""

from prunelab.deploy import ExportConf, cli, export_run


def main() -> None:
    cli(export_run, ExportConf)


if __name__ == "__main__":
    main()
