"""What the example policies save: ``.venv/bin/python bench/policy_savings.py [--corpus DIR]``.

Every captured AdmissionReview in ``DIR/kube-audit-rest.log`` is turned into
its audit line by the same pipeline the webhook runs (``RecordPipeline``), once
with no policy (Secret redaction on, as by default) and once per example
policy, and the bytes that would be written are added up. No server, no
network: the figures are exact for the corpus and do not depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from kube_audit_rest.policy import Policy, load_policy, parse_policy
from kube_audit_rest.privacy_config import PrivacyConfig
from kube_audit_rest.record_pipeline import FixedConfig, PipelineEvents, RecordPipeline
from kube_audit_rest.redaction import build_redactor
from kube_audit_rest.review import InvalidReview, parse_review

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = PROJECT.parent / "shared" / "corpus"
POLICIES = PROJECT / "examples" / "policies"
RECEIVED_NS = 1_700_000_000_123_456_789


# Keep everything, only drop managedFields: what omitManagedFields alone saves.
MANAGED_FIELDS_ONLY = parse_policy(
    "(inline)",
    {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitManagedFields": True,
        "rules": [{"level": "RequestResponse"}],
    },
)


def written(
    bodies: list[bytes], policy: Policy | None
) -> tuple[int, int, collections.Counter[str]]:
    """(records written, bytes written, drops by rule) for the bodies under *policy*."""
    drops: collections.Counter[str] = collections.Counter()
    config = PrivacyConfig(policy, build_redactor(True, {}, None), False)
    events = PipelineEvents(dropped=lambda _reason, rule: drops.update([rule]))
    pipeline = RecordPipeline(FixedConfig(config), events)
    records = size = 0
    for body in bodies:
        line = pipeline.process(body, parse_review(body).document, RECEIVED_NS)
        if line is not None:
            records += 1
            size += len(line)
    return records, size, drops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = parser.parse_args(argv)
    path = args.corpus / "kube-audit-rest.log"
    if not path.is_file():
        sys.stderr.write(f"policy_savings: no corpus at {path}\n")
        return 2
    bodies = []
    for line in path.read_bytes().splitlines():
        try:
            parse_review(line)
        except InvalidReview:
            continue
        bodies.append(line)
    received = sum(len(body) for body in bodies)
    print(f"corpus: {path} ({len(bodies)} reviews, {received} bytes received)")
    base_records, base_bytes, _ = written(bodies, None)
    print(f"{'policy':<26} {'records':>8} {'bytes written':>14} {'saved':>7}  dropped by rule")
    print(f"{'(none)':<26} {base_records:>8} {base_bytes:>14} {'':>7}")
    candidates = [("(omitManagedFields only)", MANAGED_FIELDS_ONLY)]
    candidates += [(p.name, load_policy(str(p))) for p in sorted(POLICIES.glob("*.yaml"))]
    for name, policy in candidates:
        records, size, drops = written(bodies, policy)
        saved = 100 * (1 - size / base_bytes) if base_bytes else 0.0
        by_rule = ", ".join(f"rule {rule}: {count}" for rule, count in sorted(drops.items()))
        print(f"{name:<26} {records:>8} {size:>14} {saved:>6.1f}%  {by_rule or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
