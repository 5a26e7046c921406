"""IAM policy templates for a bucket, as mParticle's integration page gives them.

Role-based: a bucket policy that lets the forwarder's role write. User-based:
a policy for the IAM user whose keys the forwarder is given.
"""

from __future__ import annotations

import json

# Every S3 action the forwarder calls on its bucket, and no other:
#   s3:PutObject             PutObject, and CreateMultipartUpload, UploadPart and
#                            CompleteMultipartUpload for files over 128 MiB
#   s3:GetObject             HeadObject of a taken key, to tell its own retried write
#                            (same content hash) from other data
#   s3:AbortMultipartUpload  a failed multipart upload leaves no orphaned parts
_WRITE_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"]


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


def kms_statement(kms_key_id: str) -> dict:
    """What SSE-KMS needs besides S3: a data key per object from the bucket's key."""
    key_arn = kms_key_id if kms_key_id.startswith("arn:") else (
        f"arn:aws:kms:<REGION>:<ACCOUNT_ID>:key/{kms_key_id}"
    )
    return {
        "Sid": "MParticleS3ForwarderKms",
        "Effect": "Allow",
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Resource": key_arn,
    }


def policy_text(
    kind: str, bucket: str, role_arn: str | None = None, kms_key_id: str | None = None
) -> str:
    """The policy as JSON: `role` (bucket policy) or `user` (IAM user policy).

    With a KMS key, the user policy also grants its use; for role-based auth the
    role's own policy (or the key policy) must grant it, as the README says.
    """
    if kind == "role":
        policy = bucket_policy(bucket, role_arn)
    else:
        policy = user_policy(bucket)
        if kms_key_id:
            policy["Statement"].append(kms_statement(kms_key_id))
    return json.dumps(policy, indent=2)
