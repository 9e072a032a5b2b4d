"""``python -m prunelab.measure run=<run dir>``: dense, sparse (CSR), compact and int8 variants of
a run, measured side by side. See :mod:`prunelab.deploy`."""

from prunelab.deploy import MeasureConf, cli, measure_run

if __name__ == "__main__":
    cli(measure_run, MeasureConf)
