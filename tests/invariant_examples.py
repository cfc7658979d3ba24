"""The policy the invariant tests declare their invariants in, as YAML text:

- regions ``eu-west`` and ``eu-central`` (jurisdiction ``EU``) and ``us-east`` (``US``);
  nodes ``node/eu-*`` may claim the EU regions, ``node/us-*`` ``us-east``;
- ``clinic`` runs only in the EU, its data stays in the EU, its ``health`` data only in
  ``eu-west``; it may hold 10 tasks and 4 CPUs;
- ``retail`` runs and keeps data anywhere, except ``payments`` data, which stays in the US.

:func:`with_invariants` appends an ``invariants:`` list; each rule is written single-quoted
on the line ``RULE_LINE + 3 * index``, starting at column :data:`RULE_COLUMN`.
"""

from __future__ import annotations

from fabric.policy import Policy, load_policy_text

BASE = """\
apiVersion: fabric/v1
kind: Policy
regions:
  eu-west: {jurisdiction: EU}
  eu-central: {jurisdiction: EU}
  us-east: {jurisdiction: US}
nodes:
  - {identity: "node/eu-*", regions: [EU]}
  - {identity: "node/us-*", regions: [us-east]}
tenants:
  clinic:
    identities: [tenant/clinic]
    placement: {allow: [EU]}
    residency:
      default: EU
      classes: {health: [eu-west]}
    quotas: {tasks: 10, cpus: 4}
  retail:
    identities: [tenant/retail]
    residency:
      classes: {payments: [US]}
invariants:
"""
NO_INVARIANTS = BASE.removesuffix("invariants:\n")
RULE_LINE = BASE.count("\n") + 3  # the rule of the first invariant
RULE_COLUMN = 12  # its first character, after "    rule: '"


def invariant_yaml(name: str, rule: str, when: str | None = None) -> str:
    """One invariant as YAML list item, its rule on its third line."""
    text = f"  - name: {name}\n    description: {name}\n    rule: '{_quoted(rule)}'\n"
    if when is not None:
        text += f"    when: '{_quoted(when)}'\n"
    return text


def with_invariants(*rules: str | tuple[str, str], base: str = BASE) -> str:
    """`base` with one invariant per rule (or (rule, when) pair), named i0, i1, ..."""
    text = base
    for index, rule in enumerate(rules):
        if isinstance(rule, tuple):
            text += invariant_yaml(f"i{index}", *rule)
        else:
            text += invariant_yaml(f"i{index}", rule)
    return text


def policy_with(*rules: str | tuple[str, str], base: str = BASE) -> Policy:
    return load_policy_text(with_invariants(*rules, base=base), "p.yaml")


def _quoted(text: str) -> str:
    return text.replace("'", "''")
