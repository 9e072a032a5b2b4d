"""From a pruned model to a faster one: semi-structured (2:4) sparse execution, ..."""

from prunelab.compress.semi_structured import (
    SemiStructuredReport,
    is_two_four,
    semi_structured_eligibility,
    to_semi_structured,
)

__all__ = ["SemiStructuredReport", "is_two_four", "semi_structured_eligibility", "to_semi_structured"]
