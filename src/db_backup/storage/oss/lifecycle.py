"""Bucket lifecycle admin: the rule this program recommends for its prefix, read and applied.

The design's rule: the newest objects in Standard, IA after `ia_after_days` (30), deleted after
`expire_after_days` (90); multipart uploads left open under the prefix are aborted after a week.
"""

from __future__ import annotations

import oss2
from oss2.models import BucketLifecycle, LifecycleExpiration, LifecycleRule, StorageTransition

from db_backup.storage.oss.settings import OssSettings
from db_backup.storage.oss.target import OssTarget

STALE_UPLOAD_DAYS = 7


def lifecycle_rule_id(settings: OssSettings) -> str:
    """Returns the id of the lifecycle rule this program manages for the prefix."""
    return f"db-backup-{settings.prefix}"


def lifecycle_rule(
    settings: OssSettings, ia_after_days: int = 30, expire_after_days: int = 90
) -> LifecycleRule:
    """Returns the rule: Standard at first, IA after `ia_after_days`, deleted after `expire...`."""
    if not 0 < ia_after_days < expire_after_days:
        raise ValueError(
            "lifecycle needs 0 < ia_after_days < expire_after_days, got "
            f"{ia_after_days}, {expire_after_days}"
        )
    return LifecycleRule(
        lifecycle_rule_id(settings),
        settings.prefix,
        status=LifecycleRule.ENABLED,
        expiration=LifecycleExpiration(days=expire_after_days),
        storage_transitions=[
            StorageTransition(days=ia_after_days, storage_class=oss2.BUCKET_STORAGE_CLASS_IA)
        ],
        abort_multipart_upload=oss2.models.AbortMultipartUpload(days=STALE_UPLOAD_DAYS),
    )


def get_lifecycle(settings: OssSettings) -> list[LifecycleRule]:
    """Returns the bucket's lifecycle rules ([] when it has none)."""
    return _read_rules(OssTarget(settings))


def apply_lifecycle(
    settings: OssSettings, ia_after_days: int = 30, expire_after_days: int = 90
) -> list[LifecycleRule]:
    """Puts this program's rule into the bucket lifecycle, keeping other rules; returns all."""
    rule = lifecycle_rule(settings, ia_after_days, expire_after_days)
    target = OssTarget(settings)
    others = [r for r in _read_rules(target) if r.id != rule.id]
    rules = [*others, rule]
    target.call(
        "write lifecycle", None, lambda: target.bucket.put_bucket_lifecycle(BucketLifecycle(rules))
    )
    return rules


def _read_rules(target: OssTarget) -> list[LifecycleRule]:
    def fetch() -> list[LifecycleRule]:
        try:
            rules: list[LifecycleRule] = target.bucket.get_bucket_lifecycle().rules
            return rules
        except oss2.exceptions.NoSuchLifecycle:
            return []

    return target.call("read lifecycle", None, fetch)


def describe_lifecycle(rules: list[LifecycleRule]) -> str:
    """Returns one human-readable line per lifecycle rule, for `db-backup oss-lifecycle`."""
    if not rules:
        return "no lifecycle rules"
    lines = []
    for rule in rules:
        steps = []
        for transition in rule.storage_transitions or []:
            when = f"after {transition.days} days" if transition.days is not None else "on a date"
            steps.append(f"to {transition.storage_class} {when}")
        if rule.expiration is not None:
            if rule.expiration.days is not None:
                steps.append(f"delete after {rule.expiration.days} days")
            elif rule.expiration.created_before_date is not None:
                steps.append(f"delete if created before {rule.expiration.created_before_date}")
        if rule.abort_multipart_upload is not None and rule.abort_multipart_upload.days:
            steps.append(f"abort stale uploads after {rule.abort_multipart_upload.days} days")
        prefix = rule.prefix or "(whole bucket)"
        lines.append(f"{rule.id} [{rule.status}] {prefix}: {', '.join(steps) or 'no actions'}")
    return "\n".join(lines)
