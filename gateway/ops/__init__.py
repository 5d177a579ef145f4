"""Field operations, one module per family. ``FIELD_RULES`` is what a policy may name."""

from gateway.ops.basic import Drop, Generalise, Keep, Mask, Replace
from gateway.ops.identity import Encrypt, Pseudonymise
from gateway.ops.location import CoarsenLocation
from gateway.ops.network import TruncateIp
from gateway.ops.numbers import Bucket, BucketTime, Round
from gateway.ops.text import Scrub

FIELD_RULES = (
    Keep, Drop, Pseudonymise, Encrypt, TruncateIp, CoarsenLocation,
    Round, Bucket, BucketTime, Mask, Replace, Generalise, Scrub,
)  # fmt: skip
# Operations that can rewrite a captured topic segment (their output is a plain string or number).
TOPIC_RULES = (Keep, Pseudonymise, Encrypt, Mask, Replace, Generalise)

__all__ = [
    "FIELD_RULES", "TOPIC_RULES", "Bucket", "BucketTime", "CoarsenLocation", "Drop", "Encrypt", "Generalise",
    "Keep", "Mask", "Pseudonymise", "Replace", "Round", "Scrub", "TruncateIp",
]  # fmt: skip
assert set(__all__) == {c.__name__ for c in FIELD_RULES} | {"FIELD_RULES", "TOPIC_RULES"}
