"""The invariant language as an operator (or an attacker) meets it: what parses, and the
exact problem, at file:line:column, for typos, wrong types, unbalanced text and attempts
to smuggle Python in. Messages are pinned exactly: they are what an operator reads."""

from __future__ import annotations

import dataclasses
import json

import fabric.policy
import pytest
from fabric.policy import PolicyError, compile_policy, load_policy_text

from tests.invariant_examples import (
    BASE,
    RULE_COLUMN,
    RULE_LINE,
    invariant_yaml,
    policy_with,
    with_invariants,
)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml")
    return [str(problem) for problem in info.value.problems]


def rule_problems(rule: str) -> list[str]:
    """The problems of a policy whose one invariant has `rule`."""
    return problems(with_invariants(rule))


def at(offset: int, message: str) -> str:
    """A problem at character `offset` of the first invariant's rule."""
    return f"p.yaml:{RULE_LINE}:{RULE_COLUMN + offset}: invariants[0].rule: {message}"


# ----------------------------------------------------------------------------- what parses


def test_the_health_data_rule_parses_and_reads_what_it_says() -> None:
    rule = (
        '"health" in inputs.classes implies node.jurisdiction == "EU" '
        'and node.labels["confidential"] == "true"'
    )
    policy = policy_with(rule)
    (invariant,) = policy.invariants
    assert (invariant.name, invariant.description, invariant.rule, invariant.when) == (
        "i0",
        "i0",
        rule,
        None,
    )
    assert invariant.fields == {
        "inputs.classes",
        "node.jurisdiction",
        'node.labels["confidential"]',
    }
    assert invariant.rule_expr.op == "implies"


@pytest.mark.parametrize(
    "rule",
    [
        'tenant == "clinic" => node.region in {"eu-west", "eu-central"}',
        'not (action == "transfer") or node.region in inputs.regions',
        'inputs.classes subset {"health", "payments"}',
        "inputs.regions contains node.region",
        'node.region not in {"us-east"} or tenant != "clinic"',
        "usage.cpus + task.cpus <= quota.cpus and usage.tasks < 100",
        "task.memory >= 0 and task.gpus > 0 or task.gpus == 0",
        'task.region == node.region or task.residency == "any"',
        'inputs.jurisdictions subset {"EU"} implies node.jurisdiction == "EU"',
        "true",
        'node.labels["zone/rack.1"] != "a"',
        'action == "actor.create" implies usage.actors + 1 <= quota.actors',
    ],
)
def test_rules_that_parse_and_type_check(rule: str) -> None:
    assert policy_with(rule).invariants[0].rule == rule


def test_implies_is_right_associative_and_binds_loosest() -> None:
    # a implies (b implies c): with a and b true it is c.
    (invariant,) = policy_with(
        'tenant == "clinic" implies action == "task" implies false'
    ).invariants
    implies = invariant.rule_expr
    assert implies.op == "implies" and implies.args[1].op == "implies"
    # not binds tighter than and, looser than ==.
    (invariant,) = policy_with('not tenant == "clinic" and true').invariants
    assert invariant.rule_expr.op == "and" and invariant.rule_expr.args[0].op == "not"


def test_a_guard_is_a_rule_too() -> None:
    text = BASE + invariant_yaml("g", "usage.tasks < quota.tasks", when='tenant == "clinic"')
    (invariant,) = load_policy_text(text).invariants
    assert invariant.when == 'tenant == "clinic"'
    assert invariant.fields == {"usage.tasks", "quota.tasks", "tenant"}


# ----------------------------------------------------------------------------- typos


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            'node.regoin == "eu-west"',
            at(0, "unknown field 'node.regoin'; did you mean 'node.region'?"),
        ),
        (
            '"health" in input.classes',
            at(12, "unknown field 'input.classes'; did you mean 'inputs.classes'?"),
        ),
        (
            'node.region == "eu-wset"',
            at(15, "unknown region 'eu-wset'; did you mean 'eu-west'?"),
        ),
        (
            'node.region in {"eu-west", "mars"}',
            at(27, "unknown region 'mars' (declared: eu-central, eu-west, us-east)"),
        ),
        (
            'node.jurisdiction == "eu"',
            at(21, "unknown jurisdiction 'eu'; did you mean 'EU'?"),
        ),
        ('tenant == "clinc"', at(10, "unknown tenant 'clinc'; did you mean 'clinic'?")),
        (
            '"helth" in inputs.classes',
            at(0, "unknown data class 'helth'; did you mean 'health'?"),
        ),
        (
            'action == "submit"',
            at(10, "unknown action 'submit' (declared: task, actor.create, actor.call, transfer)"),
        ),
        (
            'task.residency == "lab"',
            at(
                18,
                "unknown residency label 'lab' (declared: health, payments, EU, US, "
                "eu-central, eu-west, us-east, any)",
            ),
        ),
        (
            "usage.cpu <= 4",
            at(0, "unknown field 'usage.cpu'; did you mean 'usage.cpus'?"),
        ),
        (
            "money.spent <= 4",
            at(
                0,
                "unknown field 'money.spent'; fields are tenant, action, node.*, task.*, "
                "inputs.*, usage.* and quota.*",
            ),
        ),
        (
            'node == "eu-west"',
            at(
                0,
                "node is not a value: use one of node.region, node.jurisdiction, "
                'node.labels["key"]',
            ),
        ),
        ('node.labels == "x"', at(0, 'node.labels needs a key: node.labels["key"]')),
        (
            'node.labels["region"] == "eu-west"',
            at(0, 'use node.region, not node.labels["region"]'),
        ),
        (
            'node.region["x"] == "eu-west"',
            at(0, "only node.labels takes a key; node.region does not"),
        ),
    ],
    ids=lambda v: v if len(v) < 40 else None,
)
def test_typos(rule: str, expected: str) -> None:
    assert rule_problems(rule) == [expected]


def test_every_type_error_in_a_rule_is_reported() -> None:
    assert rule_problems('node.region == "mars" or tenant == "bob"') == [
        at(15, "unknown region 'mars' (declared: eu-central, eu-west, us-east)"),
        at(35, "unknown tenant 'bob' (declared: clinic, retail)"),
    ]


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("node.region < 3", at(0, "'<' needs numbers, but node.region is a region name")),
        (
            'inputs.classes == "health"',
            at(
                15,
                "'==' cannot compare inputs.classes (a set of data class names) with "
                '"health" (a string); did you mean "health" in inputs.classes?',
            ),
        ),
        (
            'task.cpus == "4"',
            at(10, "'==' cannot compare task.cpus (a number) with \"4\" (a string)"),
        ),
        (
            "node.region == node.jurisdiction",
            at(
                12,
                "'==' cannot compare node.region (a region name) with node.jurisdiction "
                "(a jurisdiction)",
            ),
        ),
        (
            'node.region in "eu-west"',
            at(
                12,
                "'in' needs a string and a set, got node.region (a region name) and "
                "\"eu-west\" (a string); did you mean '=='?",
            ),
        ),
        (
            "inputs.regions in inputs.regions",
            at(
                15,
                "'in' needs a string and a set, got inputs.regions (a set of region names) "
                "and inputs.regions (a set of region names); did you mean 'subset'?",
            ),
        ),
        (
            'node.region subset {"eu-west"}',
            at(
                12,
                "'subset' needs two sets, got node.region (a region name) and "
                '{"eu-west"} (a set of strings)',
            ),
        ),
        (
            'tenant == "clinic" and task.cpus',
            at(23, "'and' needs true or false, but task.cpus is a number"),
        ),
        ("node.region", at(0, "a rule must be true or false, but node.region is a region name")),
        ("task.cpus + 1", at(0, "a rule must be true or false, but task.cpus + 1 is a number")),
        (
            '"a" == "a"',
            at(4, '\'"a" == "a"\' compares two constants: it does not depend on the dispatch'),
        ),
        (
            "task.region + 1 > 0",
            at(0, "'+' needs numbers, but task.region is a region name or absent"),
        ),
    ],
)
def test_type_errors(rule: str, expected: str) -> None:
    assert rule_problems(rule) == [expected]


# ----------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ('(tenant == "clinic"', at(0, "unbalanced parentheses: this '(' is never closed")),
        ('tenant == "clinic")', at(18, "unbalanced parentheses: this ')' closes nothing")),
        ('((tenant == "clinic")', at(0, "unbalanced parentheses: this '(' is never closed")),
        ('node.region in {"eu-west"', at(15, "unbalanced braces: this '{' is never closed")),
        ('node.labels["a" == "b"', at(11, "unbalanced brackets: this '[' is never closed")),
        ("tenant ==", at(9, "the rule ends too early: expected a value")),
        ('tenant == "clinic', at(10, "unterminated string")),
        ('tenant == "cli\\nic"', at(10, "escapes are not supported in strings")),
        ('tenant = "clinic"', at(7, "unexpected character '=': use '==' to compare")),
        ("true && true", at(5, "unexpected character '&': use 'and'")),
        ("true || true", at(5, "unexpected character '|': use 'or'")),
        ("!true", at(0, "unexpected character '!': use 'not', or '!=' to compare")),
        (
            "usage.cpus - 1 > 0",
            at(11, "unexpected character '-': only '+' is supported, and numbers are not negative"),
        ),
        (
            'tenant == "clinic" == action',
            at(19, "comparisons do not chain: join them with 'and'"),
        ),
        ("true true", at(5, "expected an operator or the end of the rule, got 'true'")),
        ("tenant == and", at(10, "expected a value, got 'and'")),
        ("node.region in {node.region}", at(16, "a set holds strings, got 'node'")),
        ("node. region == 1", at(4, "expected a field name right after '.'")),
        ("node.labels .x", at(12, "expected an operator or the end of the rule, got '.'")),
        (
            "",
            f"p.yaml:{RULE_LINE}:{RULE_COLUMN - 1}: invariants[0].rule: expected a rule: an "
            "expression of the invariant language, at most 4000 characters, got ''",
        ),
    ],
)
def test_syntax_errors(rule: str, expected: str) -> None:
    assert rule_problems(rule) == [expected]


# ----------------------------------------------------------------------------- attacks


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            '__import__("os")',
            at(0, "calls are not part of the invariant language: __import__(...)"),
        ),
        (
            '__import__("os").system("id")',
            at(0, "calls are not part of the invariant language: __import__(...)"),
        ),
        ('eval("1") or true', at(0, "calls are not part of the invariant language: eval(...)")),
        (
            "tenant.__class__.__subclasses__()",
            at(
                0,
                "calls are not part of the invariant language: "
                "tenant.__class__.__subclasses__(...)",
            ),
        ),
        (
            "tenant.__class__ == tenant",
            at(
                0,
                "unknown field 'tenant.__class__'; fields are tenant, action, node.*, task.*, "
                "inputs.*, usage.* and quota.*",
            ),
        ),
        (
            "true; import os",
            at(4, "unexpected character ';': a rule is one expression"),
        ),
        ("{{7*7}}", at(3, "unexpected character '*': only '+' is supported")),
        ('{{"7"}}', at(1, "a set holds strings, got '{'")),
        ("lambda: true", at(6, "unexpected character ':'")),
        ('"\\x00" in inputs.classes', at(0, "escapes are not supported in strings")),
        ("`id`", at(0, "unexpected character '`'")),
    ],
    ids=[
        "import",
        "import-system",
        "eval",
        "subclasses",
        "dunder",
        "statement",
        "template",
        "nested-set",
        "lambda",
        "escape",
        "backtick",
    ],
)
def test_injection_attempts_are_refused_at_their_position(rule: str, expected: str) -> None:
    assert rule_problems(rule) == [expected]


def test_deep_nesting_is_refused_not_recursed_into() -> None:
    rule = "(" * 200 + "true" + ")" * 200
    assert rule_problems(rule) == [at(64, "the rule nests deeper than 64 levels")]
    deep_not = "not " * 500 + "true"
    assert rule_problems(deep_not) == [at(256, "the rule nests deeper than 64 levels")]


def test_a_rule_longer_than_the_limit_is_refused_by_the_schema() -> None:
    rule = " or ".join(['tenant == "clinic"'] * 200)  # 4,400 characters
    found = rule_problems(rule)
    assert found == [
        f"p.yaml:{RULE_LINE}:{RULE_COLUMN - 1}: invariants[0].rule: expected a rule: an "
        f"expression of the invariant language, at most 4000 characters, got {rule!r}"
    ]


# ----------------------------------------------------------------------------- positions


def test_positions_inside_quoted_and_block_rules() -> None:
    double = BASE + (
        "  - name: d\n"
        "    description: double-quoted, with escapes before the fault\n"
        '    rule: "\\"health\\" in inputs.classes implies node.region == \\"eu-wst\\""\n'
    )
    # The literal starts at character 50 of the rule, and the source spells three
    # backslashes before its quote.
    assert problems(double) == [
        f"p.yaml:{RULE_LINE}:{RULE_COLUMN + 50 + 3}: invariants[0].rule: unknown region "
        "'eu-wst'; did you mean 'eu-west'?"
    ]
    folded = BASE + (
        "  - name: f\n"
        "    description: folded over three lines\n"
        "    rule: >\n"
        '      "health" in inputs.classes\n'
        "      implies\n"
        '      node.jurisdiction == "UE"\n'
    )
    assert problems(folded) == [
        f"p.yaml:{RULE_LINE + 3}:28: invariants[0].rule: unknown jurisdiction 'UE' "
        "(declared: EU, US)"
    ]
    literal = BASE + (
        "  - name: l\n"
        "    description: literal block\n"
        "    rule: |\n"
        '      tenant == "clinic" and\n'
        "        node.regoin == 1\n"
    )
    assert problems(literal) == [
        f"p.yaml:{RULE_LINE + 2}:9: invariants[0].rule: unknown field 'node.regoin'; "
        "did you mean 'node.region'?"
    ]


def test_guard_problems_name_the_guard() -> None:
    text = BASE + invariant_yaml("g", "true", when='tenant == "clinc"')
    assert problems(text) == [
        f"p.yaml:{RULE_LINE + 1}:22: invariants[0].when: unknown tenant 'clinc'; "
        "did you mean 'clinic'?"
    ]


def test_each_invariant_is_placed_at_its_own_rule() -> None:
    assert problems(with_invariants("true", 'tenant == "x"')) == [
        f"p.yaml:{RULE_LINE + 3}:{RULE_COLUMN + 10}: invariants[1].rule: unknown tenant 'x' "
        "(declared: clinic, retail)"
    ]


def test_plain_data_problems_have_no_position() -> None:
    document = json.loads(json.dumps(policy_with("true").document))
    document["invariants"][0]["rule"] = "node.regoin == 1"
    with pytest.raises(PolicyError) as info:
        compile_policy(document, "bundle")
    assert str(info.value) == (
        "bundle:0:0: invariants[0].rule: unknown field 'node.regoin'; did you mean 'node.region'?"
    )


# ----------------------------------------------------------------------------- the list


def test_names_are_unique_and_well_formed_and_every_key_is_known() -> None:
    text = BASE + (
        "  - {name: same, description: a, rule: 'true'}\n"
        "  - {name: same, description: b, rule: 'true'}\n"
        "  - {name: Bad_Name, description: c, rule: 'true'}\n"
        "  - {name: quiet, rule: 'true'}\n"
        "  - {name: typo, description: d, rule: 'true', wehn: 'true'}\n"
    )
    line = RULE_LINE - 2
    assert problems(text) == [
        f"p.yaml:{line + 1}:12: invariants[1].name: invariant 'same' is already declared at "
        "invariants[0]",
        f"p.yaml:{line + 2}:12: invariants[2].name: expected an invariant name: lowercase "
        "letters, digits and '-', starting with a letter, got 'Bad_Name'",
        f"p.yaml:{line + 3}:5: invariants[3]: missing required key 'description'",
        f"p.yaml:{line + 4}:48: unknown key 'wehn' in invariants[4]; did you mean 'when'?",
    ]


def test_invariants_must_be_a_list_of_mappings() -> None:
    assert problems(BASE.replace("invariants:\n", "invariants: {a: 1}\n")) == [
        f"p.yaml:{RULE_LINE - 3}:13: invariants: expected a list of invariants, got a mapping"
    ]


# ----------------------------------------------------------------------------- the policy


def test_the_version_follows_the_invariants() -> None:
    one = policy_with('tenant == "clinic" implies node.jurisdiction == "EU"')
    same = policy_with('tenant == "clinic" implies node.jurisdiction == "EU"')
    other = policy_with('tenant == "clinic" implies node.jurisdiction == "US"')
    none = load_policy_text(BASE.replace("invariants:\n", ""))
    assert one.version == same.version
    assert len({one.version, other.version, none.version}) == 3
    assert none.invariants == ()


def test_compiling_the_document_again_gives_equal_invariants() -> None:
    policy = policy_with(("usage.tasks < quota.tasks", 'tenant == "clinic"'), "true")
    again = compile_policy(json.loads(json.dumps(policy.document, sort_keys=True)))
    assert again == policy and again.version == policy.version
    assert again.invariants[0] is not policy.invariants[0]
    assert [i.when for i in again.invariants] == ['tenant == "clinic"', None]


def test_an_invariant_equals_by_its_text_not_its_compiled_parts() -> None:
    (invariant,) = policy_with("true").invariants
    assert dataclasses.replace(invariant, test=lambda facts: False) == invariant
    assert dataclasses.replace(invariant, rule="false") != invariant


def test_the_new_names_are_exported() -> None:
    names = [
        "DispatchFacts",
        "HookRegistry",
        "INVARIANT_HOOKS",
        "Invariant",
        "InvariantHookError",
        "ProofError",
        "Violation",
        "check_invariants",
        "prove_narrower",
        "prove_policy",
        "register_invariant_hook",
        "rules_refusal",
        "unregister_invariant_hook",
    ]
    assert set(names) <= set(fabric.policy.__all__)
    assert all(hasattr(fabric.policy, name) for name in names)
    assert issubclass(fabric.policy.ProofError, PolicyError)
    assert issubclass(fabric.policy.InvariantHookError, PolicyError)
