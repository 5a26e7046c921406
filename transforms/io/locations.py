"""Where data is read from or written to: the one place that tells an S3 location
(`s3://bucket/key`) from a local path or another Beam filesystem's URL, for inputs,
outputs, dead letters and the start-up checks.
"""

from __future__ import annotations

import dataclasses

__all__ = ["S3_SCHEME", "Location", "is_s3", "is_url"]

S3_SCHEME = "s3://"


def is_s3(location: str) -> bool:
    """Whether `location` is on S3 (`s3://...`)."""
    return location.startswith(S3_SCHEME)


def is_url(location: str) -> bool:
    """Whether `location` names a scheme (S3's or another Beam filesystem's), not a
    local path."""
    return "://" in location


@dataclasses.dataclass(frozen=True)
class Location:
    """An S3 bucket and the key (or key prefix, or key pattern) in it; or, with no
    bucket, a local path."""

    bucket: str | None
    path: str

    @classmethod
    def of(cls, location: str) -> Location:
        """`s3://bucket/key` → (bucket, key as given); anything else → (None, as given)."""
        if is_s3(location):
            bucket, _, key = location[len(S3_SCHEME):].partition("/")
            return cls(bucket, key)
        return cls(None, location)

    @property
    def on_s3(self) -> bool:
        return self.bucket is not None

    @property
    def prefix(self) -> str:
        """The key prefix without edge slashes (S3), or the path (local)."""
        return self.path.strip("/") if self.on_s3 else self.path

    def url_of(self, key: str) -> str:
        """`s3://bucket/key` of a key in this location's bucket."""
        return f"{S3_SCHEME}{self.bucket}/{key}"
