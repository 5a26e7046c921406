"""IAM policy templates for a bucket, as mParticle's integration page gives them.

Role-based: a bucket policy that lets the forwarder's role write. User-based:
a policy for the IAM user whose keys the forwarder is given.
"""

from __future__ import annotations

import json

_WRITE_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:ListBucket"]


def bucket_policy(bucket: str, role_arn: str | None) -> dict:
    """Bucket policy for role-based auth: the role may write objects in the bucket."""
    principal = role_arn or "arn:aws:iam::<ACCOUNT_ID>:role/<FORWARDER_ROLE>"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "MParticleS3ForwarderWrite",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": _WRITE_ACTIONS,
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


def user_policy(bucket: str) -> dict:
    """Identity policy for user-based auth (attach to the IAM user)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "MParticleS3ForwarderWrite",
                "Effect": "Allow",
                "Action": _WRITE_ACTIONS,
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


def policy_text(kind: str, bucket: str, role_arn: str | None = None) -> str:
    policy = bucket_policy(bucket, role_arn) if kind == "role" else user_policy(bucket)
    return json.dumps(policy, indent=2)
