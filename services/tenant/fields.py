"""Field types shared by the request schemas of several domains, with their limits.

Limits live in the types, so msgspec rejects bad input (400, naming the field) before any
handler runs, and the OpenAPI document shows them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# Good enough to catch typos; the real check is that mail arrives.
EMAIL_PATTERN = r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$"
# Printable text without control characters, not blank.
_DISPLAY_TEXT = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"

Email = Annotated[str, msgspec.Meta(max_length=254, pattern=EMAIL_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_DISPLAY_TEXT)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=_DISPLAY_TEXT)]
ShortText = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
CountryCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
NonNegativeNano = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# Decimal credits as text ("12", "0.5"): exact, never a float on the wire.
CreditsText = Annotated[str, msgspec.Meta(pattern=r"^\d{1,12}(\.\d{1,9})?$")]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
# A public model name as clients send it in `model`.
ModelName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
]
