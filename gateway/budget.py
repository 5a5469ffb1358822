"""The byte budget of one request's images, shared by its concurrent URL fetches."""

from __future__ import annotations

from tandem.errors import InvalidInput


class ByteBudget:
    """Counts the image bytes a request has taken so far and refuses past ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        """Account ``n`` more bytes; raises ``InvalidInput`` once the total exceeds the limit."""
        self.used += n
        if self.used > self.limit:
            raise InvalidInput(
                f"the request's images total more than {self.limit} bytes; send fewer or smaller images"
            )
