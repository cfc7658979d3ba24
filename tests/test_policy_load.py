"""Loading and checking the tenancy policy: the shipped configs, versions, the published
schema, every kind of problem with its exact position and message, and `fabric policy
check`. Messages are pinned exactly: they are what an operator reads."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path
from typing import Any

import fabric.policy
import jsonschema
import pytest
import yaml
from fabric.cli.main import main
from fabric.policy import (
    OPEN_POLICY,
    NodeClaim,
    Policy,
    PolicyError,
    Problem,
    Quotas,
    TenantPolicy,
    compile_policy,
    load_policy,
    load_policy_text,
    policy_version,
)

from fabric.exceptions import FabricError

ROOT = Path(__file__).resolve().parent.parent
TWO_TENANTS = ROOT / "configs" / "policy-two-tenants.yaml"
THREE_TENANTS = ROOT / "configs" / "policy-three-tenants.yaml"
SCHEMA = ROOT / "policy" / "schema.json"

GiB = 2**30

# A small valid policy; the error tests below spell out whole files instead, so that the
# line and column they assert can be read off the text.
MINIMAL = """\
apiVersion: fabric/v1
kind: Policy
regions:
  eu-west: {jurisdiction: EU}
  eu-central: {jurisdiction: EU}
  us-east: {jurisdiction: US}
tenants:
  alice:
    identities: [tenant/alice]
"""


def problems(text: str) -> list[str]:
    """The problems of the policy `text` (file name p.yaml), one string per problem."""
    with pytest.raises(PolicyError) as info:
        load_policy_text(textwrap.dedent(text), "p.yaml")
    return [str(problem) for problem in info.value.problems]


def minimal() -> dict[str, Any]:
    document = yaml.safe_load(MINIMAL)
    assert isinstance(document, dict)
    return document


# ----------------------------------------------------------------------------- the configs


def test_two_tenants_config() -> None:
    policy = load_policy(TWO_TENANTS)
    everywhere = frozenset({"eu-west", "eu-central", "us-east"})
    assert policy.regions == {"eu-west": "EU", "eu-central": "EU", "us-east": "US"}
    assert policy.nodes == (
        NodeClaim("node/eu-west-*", frozenset({"eu-west"})),
        NodeClaim("node/eu-central-*", frozenset({"eu-central"})),
        NodeClaim("node/us-east-*", frozenset({"us-east"})),
    )
    assert policy.claimable_regions("node/eu-west-1") == {"eu-west"}
    assert policy.claimable_regions("node/ap-south-1") == frozenset()
    assert policy.operators == {"operator/admin"}
    assert policy.auditors == {"operator/auditor"}
    assert policy.role("operator/admin") == "operator"
    assert policy.role("operator/auditor") == "auditor"

    alice = policy.tenants["alice"]
    assert alice == TenantPolicy(
        name="alice",
        identities=frozenset({"tenant/alice"}),
        run_regions=everywhere,
        default_residency=frozenset({"eu-west", "eu-central"}),
        data_classes={"health": frozenset({"eu-west"})},
        export_regions=frozenset(),
        quotas=Quotas(
            tasks=10000,
            actors=100,
            cpus=64.0,
            gpus=0.0,
            memory=256 * GiB,
            object_store=64 * GiB,
        ),
        uid=23001,
    )
    assert policy.tenant_of("tenant/alice") is alice
    assert policy.residency(alice, "health") == {"eu-west"}
    assert policy.residency(alice, None) == {"eu-west", "eu-central"}

    bob = policy.tenants["bob"]
    assert (bob.run_regions, bob.default_residency) == (everywhere, everywhere)
    assert (bob.uid, bob.quotas, bob.data_classes) == (23002, Quotas(), {})


def test_three_tenants_config() -> None:
    policy = load_policy(str(THREE_TENANTS))  # a str path works as well as a Path
    assert sorted(policy.tenants) == ["clinic", "research", "retail"]
    assert policy.regions == {
        "eu-west": "EU",
        "eu-central": "EU",
        "us-east": "US",
        "ap-south": "IN",
    }
    assert policy.claimable_regions("node/ap-south-7") == {"ap-south"}
    clinic, retail, research = (policy.tenants[n] for n in ("clinic", "retail", "research"))
    eu = frozenset({"eu-west", "eu-central"})
    assert (clinic.run_regions, clinic.default_residency) == (eu, eu)
    assert clinic.data_classes == {"health": {"eu-west"}}
    assert retail.run_regions == frozenset(policy.regions)
    assert retail.data_classes == {"payments": {"us-east"}}
    assert policy.tenant_of("tenant/retail-batch") is retail
    assert research.run_regions == {"us-east", "ap-south"}
    assert research.default_residency == frozenset(policy.regions)
    assert research.export_regions == frozenset()
    assert research.quotas.object_store == 2**40
    assert all(t.quotas != Quotas() and t.uid is not None for t in policy.tenants.values())


def test_defaults_mean_anywhere_and_no_quota() -> None:
    policy = load_policy_text(MINIMAL)
    alice = policy.tenants["alice"]
    everywhere = frozenset(policy.regions)
    assert (alice.run_regions, alice.default_residency) == (everywhere, everywhere)
    assert (alice.data_classes, alice.export_regions, alice.quotas, alice.uid) == (
        {},
        frozenset(),
        Quotas(),
        None,
    )
    assert (policy.nodes, policy.operators, policy.auditors) == ((), frozenset(), frozenset())
    assert not policy.open


# ----------------------------------------------------------------------------- versions


def test_version_is_stable_and_follows_the_content() -> None:
    first, second = load_policy(TWO_TENANTS), load_policy(TWO_TENANTS)
    assert first.version == second.version == policy_version(first.document)
    assert len(first.version) == 16 and int(first.version, 16) >= 0
    assert load_policy(THREE_TENANTS).version != first.version

    # Layout, comments, key order and flow style do not change what the policy says.
    reordered = """\
    # the same policy, written differently
    tenants: {alice: {identities: [tenant/alice]}}
    regions:
      us-east: {jurisdiction: US}
      eu-central:
        jurisdiction: EU
      eu-west: {jurisdiction: EU}
    kind: Policy
    apiVersion: "fabric/v1"
    """
    assert load_policy_text(textwrap.dedent(reordered)).version == (
        load_policy_text(MINIMAL).version
    )
    # Any change of content does.
    changed = MINIMAL.replace("[tenant/alice]", "[tenant/alice, tenant/alice2]")
    assert load_policy_text(changed).version != load_policy_text(MINIMAL).version
    assert OPEN_POLICY.version == "default"


@pytest.mark.parametrize("path", [TWO_TENANTS, THREE_TENANTS], ids=lambda p: p.name)
def test_compiling_the_document_again_gives_the_same_policy(path: Path) -> None:
    policy = load_policy(path)
    assert compile_policy(policy.document) == policy
    # As a node agent receives it: the canonical JSON the head signs.
    received = json.loads(json.dumps(policy.document, sort_keys=True))
    again = compile_policy(received)
    assert again.version == policy.version
    assert again == policy


def test_document_is_normalised_and_nothing_is_filled_in() -> None:
    text = MINIMAL + textwrap.indent(
        textwrap.dedent("""\
        residency:
          default: EU
          classes: {health: eu-west, lab: [eu-central]}
        quotas: {memory: 2GiB, object_store: 1024, cpus: 1.5}
        """),
        "    ",
    )
    policy = load_policy_text(text)
    assert policy.document["tenants"]["alice"] == {
        "identities": ["tenant/alice"],
        "residency": {
            "default": ["EU"],
            "classes": {"health": ["eu-west"], "lab": ["eu-central"]},
        },
        "quotas": {"memory": 2 * GiB, "object_store": 1024, "cpus": 1.5},
    }
    assert policy.tenants["alice"].data_classes == {
        "health": {"eu-west"},
        "lab": {"eu-central"},
    }
    # Written out in full, the same policy has the same version.
    explicit = text.replace("default: EU", "default: [EU]").replace("2GiB", str(2 * GiB))
    assert load_policy_text(explicit).version == policy.version


def test_the_policy_owns_its_document() -> None:
    document = minimal()
    policy = compile_policy(document)
    document["tenants"]["alice"]["identities"].append("tenant/mallory")
    assert policy.document["tenants"]["alice"]["identities"] == ["tenant/alice"]
    assert policy.tenants["alice"].identities == {"tenant/alice"}


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("7B", 7),
        ("2KiB", 2 * 2**10),
        ("2MiB", 2 * 2**20),
        ("2GiB", 2 * 2**30),
        ("2TiB", 2 * 2**40),
        ("2KB", 2 * 10**3),
        ("2MB", 2 * 10**6),
        ("2GB", 2 * 10**9),
        ("2TB", 2 * 10**12),
        ("1.5 GiB", 3 * 2**29),
        ("1.5B", 1),  # rounded down to whole bytes
        ("0B", 0),
    ],
)
def test_size_strings(size: str, expected: int) -> None:
    text = MINIMAL + f"    quotas: {{memory: '{size}', object_store: '{size}'}}\n"
    quotas = load_policy_text(text).tenants["alice"].quotas
    assert (quotas.memory, quotas.object_store) == (expected, expected)


# ----------------------------------------------------------------------------- the schema


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_closes_every_mapping() -> None:
    def objects(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            if node.get("type") == "object":
                found.append(node)
            for value in node.values():
                found.extend(objects(value))
        elif isinstance(node, list):
            for value in node:
                found.extend(objects(value))
        return found

    schema = json.loads(SCHEMA.read_text())
    mappings = objects(schema)
    assert len(mappings) >= 10
    assert all(mapping["additionalProperties"] is False for mapping in mappings)


def test_schema_is_published_with_the_package() -> None:
    import importlib.resources

    published = importlib.resources.files("fabric.policy").joinpath("schema.json")
    assert json.loads(published.read_text()) == json.loads(SCHEMA.read_text())


def test_the_configs_satisfy_the_schema_as_written() -> None:
    schema = json.loads(SCHEMA.read_text())
    for path in (TWO_TENANTS, THREE_TENANTS):
        jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


# ----------------------------------------------------------------------------- YAML problems


def test_yaml_syntax_error() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU
        tenants: {}
        """) == [
        "p.yaml:5:8: invalid YAML: expected ',' or '}', but got ':' "
        "(while parsing a flow mapping at line 4, column 12)"
    ]


def test_tab_indentation_is_a_syntax_error() -> None:
    assert problems("regions:\n\t eu-west: {}\n") == [
        "p.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token "
        "(while scanning for the next token)"
    ]


def test_duplicate_keys() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU}
          eu-west: {jurisdiction: US}
        tenants:
          alice:
            identities: [tenant/alice]
            uid: 23001
            uid: 23002
        """) == [
        "p.yaml:5:3: duplicate key 'eu-west' in regions; first given on line 4",
        "p.yaml:10:5: duplicate key 'uid' in tenants.alice; first given on line 9",
    ]


def test_duplicate_top_level_key() -> None:
    assert problems(MINIMAL + "kind: Policy\n") == [
        "p.yaml:10:1: duplicate key 'kind'; first given on line 2"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "p.yaml:1:1: the policy is empty: expected a mapping"),
        ("# only a comment\n", "p.yaml:1:1: the policy is empty: expected a mapping"),
        ("- a\n- b\n", "p.yaml:1:1: the policy document must be a mapping, got a list"),
        ("fabric\n", "p.yaml:1:1: the policy document must be a mapping, got 'fabric'"),
        (
            "a: 1\n---\nb: 2\n",
            "p.yaml:2:1: invalid YAML: but found another document "
            "(expected a single document in the stream at line 1, column 1)",
        ),
    ],
    ids=["empty", "comment", "list", "scalar", "two-documents"],
)
def test_document_must_be_one_mapping(text: str, message: str) -> None:
    assert problems(text) == [message]


def test_keys_must_be_strings() -> None:
    assert problems(MINIMAL + "    no: 1\n") == [
        "p.yaml:10:5: key no in tenants.alice is read as false, not as a string; quote it"
    ]


def test_unsafe_tags_are_refused() -> None:
    assert problems("apiVersion: !!python/name:os.system ''\n") == [
        "p.yaml:1:13: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system'"
    ]
    assert problems(MINIMAL + "    quotas: !!python/object/apply:os.system [true]\n") == [
        "p.yaml:10:13: tenants.alice.quotas: YAML tag !!python/object/apply:os.system is "
        "not supported"
    ]
    assert problems(MINIMAL + "    quotas: !!set {cpus: 1}\n") == [
        "p.yaml:10:13: tenants.alice.quotas: YAML tag !!set is not supported"
    ]


def test_merge_keys_and_alias_loops_are_refused() -> None:
    assert problems(MINIMAL + "    quotas:\n      <<: {cpus: 1}\n") == [
        "p.yaml:11:7: merge keys ('<<') are not supported in tenants.alice.quotas"
    ]
    assert problems(MINIMAL + "    placement: &p {allow: *p}\n") == [
        "p.yaml:10:16: tenants.alice.placement.allow: an alias refers to a node that contains it"
    ]


def test_a_billion_laughs_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    found = problems("\n".join(lines) + "\n")
    assert len(found) == 1
    assert found[0].endswith(": the document is too large: more than 100000 values")


# ----------------------------------------------------------------------------- schema problems


def test_misspelt_key_suggests_the_right_one() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU}
        tenants:
          alice:
            identities: [tenant/alice]
            residancy:
              default: EU
        rolse: {}
        """) == [
        "p.yaml:8:5: unknown key 'residancy' in tenants.alice; did you mean 'residency'?",
        "p.yaml:10:1: unknown key 'rolse' in the policy; did you mean 'roles'?",
    ]


def test_unknown_key_without_a_near_miss_lists_the_keys() -> None:
    assert problems(MINIMAL + "    quotas: {bananas: 3}\n") == [
        "p.yaml:10:14: unknown key 'bananas' in tenants.alice.quotas "
        "(expected one of: actors, cpus, gpus, memory, object_store, tasks)"
    ]


def test_values_of_the_wrong_kind() -> None:
    assert problems("""\
        apiVersion: fabric/v2
        kind: Policy
        regions:
          eu-west: {jurisdiction: eu}
        tenants:
          alice:
            identities: [tenant/alice]
            uid: 999
            quotas:
              tasks: 1.5
              actors: -1
              cpus: lots
              gpus: yes
              memory: 64 GiBs
              object_store: -1
        """) == [
        "p.yaml:1:13: apiVersion: expected exactly 'fabric/v1', got 'fabric/v2'",
        "p.yaml:4:27: regions.eu-west.jurisdiction: expected a jurisdiction: capital "
        "letters, digits and '-', starting with a letter, e.g. EU, got 'eu'",
        "p.yaml:8:10: tenants.alice.uid: expected an integer from 1000 to 2147483647, got 999",
        "p.yaml:10:14: tenants.alice.quotas.tasks: expected an integer >= 0, got 1.5",
        "p.yaml:11:15: tenants.alice.quotas.actors: expected an integer >= 0, got -1",
        "p.yaml:12:13: tenants.alice.quotas.cpus: expected a number >= 0, got 'lots'",
        "p.yaml:13:13: tenants.alice.quotas.gpus: expected a number >= 0, got true",
        "p.yaml:14:15: tenants.alice.quotas.memory: expected a size such as '64GiB' "
        "(units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), got '64 GiBs'",
        "p.yaml:15:21: tenants.alice.quotas.object_store: expected an integer number of "
        "bytes >= 0, got -1",
    ]


def test_a_boolean_where_a_name_belongs_says_to_quote_it() -> None:
    assert problems(MINIMAL.replace("jurisdiction: US", "jurisdiction: NO")) == [
        "p.yaml:6:27: regions.us-east.jurisdiction: expected a jurisdiction: capital "
        "letters, digits and '-', starting with a letter, e.g. EU, got false; "
        "quote it if you meant a string"
    ]


def test_missing_required_keys_are_reported_where_they_belong() -> None:
    assert problems("""\
        kind: Policy
        regions: {}
        tenants:
          alice:
            uid: 23001
        nodes:
          - identity: node/a
        """) == [
        "p.yaml:1:1: missing required key 'apiVersion'",
        "p.yaml:2:10: regions: expected a mapping of region names to regions, at least one, "
        "got an empty mapping",
        "p.yaml:4:3: tenants.alice: missing required key 'identities'",
        "p.yaml:7:5: nodes[0]: missing required key 'regions'",
    ]
    assert problems("{}") == [
        "p.yaml:1:1: missing required keys 'apiVersion', 'kind', 'regions' and 'tenants'"
    ]


def test_bad_names() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          EU_West: {jurisdiction: EU}
          eu-west: {jurisdiction: EU}
        tenants:
          Alice:
            identities: [tenant/alice]
          bob:
            identities: [bob, tenant/bob]
            residency:
              classes: {Health: EU}
        """) == [
        "p.yaml:4:3: regions: 'EU_West' is not a valid region name: expected lowercase "
        "letters, digits and '-', starting with a letter, at most 63 characters",
        "p.yaml:7:3: tenants: 'Alice' is not a valid tenant name: expected lowercase "
        "letters, digits and '-', starting with a letter, at most 63 characters",
        "p.yaml:10:18: tenants.bob.identities[0]: expected an identity 'kind/name' of kind "
        "tenant, operator or node, e.g. tenant/alice, got 'bob'",
        "p.yaml:12:17: tenants.bob.residency.classes: 'Health' is not a valid data class "
        "name: expected lowercase letters, digits and '-', starting with a letter, at most "
        "63 characters",
    ]


def test_lists() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU}
        tenants:
          alice:
            identities: []
            placement: {allow: eu-west}
            residency:
              default: [eu-west, 4]
        roles:
          operators: [operator/admin, operator/root, operator/admin]
        """) == [
        "p.yaml:7:17: tenants.alice.identities: expected a list of tenant identities, "
        "at least one, got an empty list",
        "p.yaml:8:24: tenants.alice.placement.allow: expected a list of regions, "
        "jurisdictions or 'any', at least one, got 'eu-west'",
        "p.yaml:10:26: tenants.alice.residency.default[1]: expected a region, a "
        "jurisdiction or 'any', got 4",
        "p.yaml:12:46: roles.operators[2]: 'operator/admin' is listed twice",
    ]


# ----------------------------------------------------------------------------- rules beyond it


def test_misspelt_region_suggests_the_right_one() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU}
          us-east: {jurisdiction: US}
        nodes:
          - identity: "node/eu-*"
            regions: [eu-wset]
        tenants:
          alice:
            identities: [tenant/alice]
            placement: {allow: [us-east, eu]}
            residency:
              default: [any]
              classes: {health: [mars]}
              export: [US, us-esat]
        """) == [
        "p.yaml:8:15: nodes[0].regions[0]: unknown region or jurisdiction 'eu-wset'; "
        "did you mean 'eu-west'?",
        "p.yaml:12:34: tenants.alice.placement.allow[1]: unknown region or jurisdiction "
        "'eu'; did you mean 'EU'?",
        "p.yaml:15:26: tenants.alice.residency.classes.health[0]: unknown region or "
        "jurisdiction 'mars' (declared: eu-west, us-east, EU, US, any)",
        "p.yaml:16:20: tenants.alice.residency.export[1]: unknown region or jurisdiction "
        "'us-esat'; did you mean 'us-east'?",
    ]


def test_export_names_regions_or_jurisdictions_only() -> None:
    text = MINIMAL + "    residency: {export: [any]}\n"
    assert problems(text) == [
        "p.yaml:10:26: tenants.alice.residency.export[0]: expected a region or a "
        "jurisdiction, got 'any'"
    ]
    exported = load_policy_text(MINIMAL + "    residency: {export: [US, eu-west]}\n")
    assert exported.tenants["alice"].export_regions == {"us-east", "eu-west"}


def test_identities_belong_to_one_tenant_and_have_the_right_kind() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU}
        nodes:
          - {identity: "operator/*", regions: [eu-west]}
        tenants:
          alice:
            identities: [tenant/alice, operator/alice]
            uid: 23001
          bob:
            identities: [tenant/bob, tenant/alice]
            uid: 23001
        roles:
          operators: [operator/admin, tenant/bob]
          auditors: [node/n1]
        """) == [
        "p.yaml:6:16: nodes[0].identity: 'operator/*' is not a node identity: "
        "expected 'node/<name>'",
        "p.yaml:9:32: tenants.alice.identities[1]: 'operator/alice' is not a tenant "
        "identity: expected 'tenant/<name>'",
        "p.yaml:12:30: tenants.bob.identities[1]: identity 'tenant/alice' already belongs "
        "to tenant 'alice'",
        "p.yaml:13:10: tenants.bob.uid: uid 23001 is already the uid of tenant 'alice'",
        "p.yaml:15:31: roles.operators[1]: 'tenant/bob' is not an operator identity: "
        "expected 'operator/<name>'",
        "p.yaml:16:14: roles.auditors[0]: 'node/n1' is not an operator identity: "
        "expected 'operator/<name>'",
    ]


def test_data_classes_do_not_shadow_regions_or_jurisdictions() -> None:
    assert problems(MINIMAL + "    residency: {classes: {eu-west: [EU], any: [US]}}\n") == [
        "p.yaml:10:27: tenants.alice.residency.classes.eu-west: data class 'eu-west' "
        "shadows region 'eu-west': a residency label would mean two things; rename the class",
        "p.yaml:10:42: tenants.alice.residency.classes.any: data class 'any' shadows the "
        "label 'any', which allows every region: a residency label would mean two things; "
        "rename the class",
    ]


def test_region_any_is_reserved() -> None:
    assert problems(MINIMAL.replace("us-east:", "any:")) == [
        "p.yaml:6:3: regions.any: the name 'any' is reserved: it stands for every region"
    ]


def test_a_tenant_must_be_able_to_run_where_its_data_may_live() -> None:
    assert problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU}
          us-east: {jurisdiction: US}
        tenants:
          alice:
            identities: [tenant/alice]
            placement: {allow: [US]}
            residency: {default: EU}
        """) == [
        "p.yaml:7:3: tenants.alice: tenant 'alice' can run nowhere its data may live: "
        "placement.allow covers us-east; residency.default covers eu-west"
    ]
    # Overlapping in one region is enough.
    text = MINIMAL + "    placement: {allow: [US, eu-west]}\n    residency: {default: EU}\n"
    alice = load_policy_text(text).tenants["alice"]
    assert alice.run_regions & alice.default_residency == {"eu-west"}


def test_every_problem_is_reported_at_once_in_document_order() -> None:
    found = problems("""\
        apiVersion: fabric/v1
        kind: Policy
        regions:
          eu-west: {jurisdiction: EU}
        tenants:
          bob:
            identities: [tenant/alice]
            placement: {allow: [eu-wset]}
          alice:
            identities: [tenant/alice]
            quotas: {cpus: -2}
            quotas: {cpus: 2}
        roles: {operators: [operator/admin], auditor: []}
        """)
    assert found == [
        "p.yaml:8:25: tenants.bob.placement.allow[0]: unknown region or jurisdiction "
        "'eu-wset'; did you mean 'eu-west'?",
        "p.yaml:10:18: tenants.alice.identities[0]: identity 'tenant/alice' already belongs "
        "to tenant 'bob'",
        "p.yaml:11:20: tenants.alice.quotas.cpus: expected a number >= 0, got -2",
        "p.yaml:12:5: duplicate key 'quotas' in tenants.alice; first given on line 11",
        "p.yaml:13:38: unknown key 'auditor' in roles; did you mean 'auditors'?",
    ]


def test_an_undeclared_name_that_is_also_malformed_is_reported_once() -> None:
    assert problems(MINIMAL + "    placement: {allow: [eu_west]}\n") == [
        "p.yaml:10:25: tenants.alice.placement.allow[0]: expected a region, a jurisdiction "
        "or 'any', got 'eu_west'"
    ]


# ----------------------------------------------------------------------------- plain data


def test_compile_policy_checks_plain_data_the_same_way() -> None:
    document = minimal()
    document["tenants"]["alice"]["residancy"] = {}
    document["tenants"]["alice"]["placement"] = {"allow": ["eu-wset"]}
    document["tenants"]["alice"]["quotas"] = {"cpus": float("nan"), "gpus": float("inf")}
    document["regions"][7] = {"jurisdiction": "EU"}
    with pytest.raises(PolicyError) as info:
        compile_policy(document)
    assert str(info.value).splitlines() == [
        "<policy>:0:0: regions: key 7 is not a string",
        "<policy>:0:0: tenants.alice.quotas.cpus: expected a finite number, got nan",
        "<policy>:0:0: tenants.alice.quotas.gpus: expected a finite number, got inf",
        "<policy>:0:0: unknown key 'residancy' in tenants.alice; did you mean 'residency'?",
        "<policy>:0:0: tenants.alice.placement.allow[0]: unknown region or jurisdiction "
        "'eu-wset'; did you mean 'eu-west'?",
    ]


def test_compile_policy_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(PolicyError, match=r"^<head>:0:0: the policy document must be a "):
        compile_policy([], filename="<head>")  # type: ignore[arg-type]


def test_tuples_count_as_lists() -> None:
    document = minimal()
    document["tenants"]["alice"]["identities"] = ("tenant/alice",)
    policy = compile_policy(document)
    assert policy.document == minimal()
    assert policy.version == load_policy_text(MINIMAL).version


# ----------------------------------------------------------------------------- errors


def test_policy_error() -> None:
    problem = Problem("p.yaml", 3, 7, "something is wrong")
    error = PolicyError([Problem("p.yaml", 9, 1, "later"), problem])
    assert isinstance(error, FabricError)
    assert error.problems == [problem, Problem("p.yaml", 9, 1, "later")]
    assert (
        str(error) == error.diagnostics() == ("p.yaml:3:7: something is wrong\np.yaml:9:1: later")
    )
    copied = pickle.loads(pickle.dumps(error))
    assert isinstance(copied, PolicyError) and copied.problems == error.problems
    with pytest.raises(ValueError, match=r"^a PolicyError needs at least one problem$"):
        PolicyError([])


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert str(info.value) == f"{missing}:0:0: cannot read the policy: No such file or directory"

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"apiVersion: fabric/v1\nkind: Caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        load_policy(latin1)
    assert str(info.value) == f"{latin1}:2:10: not UTF-8 text"


def test_the_new_names_are_exported() -> None:
    names = {
        "Policy": Policy,
        "TenantPolicy": TenantPolicy,
        "Quotas": Quotas,
        "NodeClaim": NodeClaim,
        "PolicyError": PolicyError,
        "Problem": Problem,
        "load_policy": load_policy,
        "load_policy_text": load_policy_text,
        "compile_policy": compile_policy,
        "OPEN_POLICY": OPEN_POLICY,
        "policy_version": policy_version,
    }
    assert set(names) <= set(fabric.policy.__all__)
    assert all(getattr(fabric.policy, name) is value for name, value in names.items())


# ----------------------------------------------------------------------------- the command


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_a_good_policy(capsys: pytest.CaptureFixture[str]) -> None:
    version = load_policy(TWO_TENANTS).version
    assert cli(capsys, "policy", "check", TWO_TENANTS) == (
        0,
        f"{TWO_TENANTS}: ok (policy version {version}: 2 tenants, 3 regions)\n",
        "",
    )
    code, out, err = cli(capsys, "policy", "check", THREE_TENANTS, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "file": str(THREE_TENANTS),
        "ok": True,
        "version": load_policy(THREE_TENANTS).version,
        "tenants": ["clinic", "research", "retail"],
        "regions": ["ap-south", "eu-central", "eu-west", "us-east"],
    }


def test_check_a_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL.replace("identities:", "identites:") + "    uid: 12\n")
    assert cli(capsys, "policy", "check", path) == (
        1,
        "",
        f"{path}:8:3: tenants.alice: missing required key 'identities'\n"
        f"{path}:9:5: unknown key 'identites' in tenants.alice; did you mean 'identities'?\n"
        f"{path}:10:10: tenants.alice.uid: expected an integer from 1000 to 2147483647, "
        "got 12\n",
    )
    code, out, err = cli(capsys, "policy", "check", path, "--json")
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "file": str(path),
        "ok": False,
        "problems": [
            {
                "file": str(path),
                "line": 8,
                "column": 3,
                "message": "tenants.alice: missing required key 'identities'",
            },
            {
                "file": str(path),
                "line": 9,
                "column": 5,
                "message": "unknown key 'identites' in tenants.alice; did you mean 'identities'?",
            },
            {
                "file": str(path),
                "line": 10,
                "column": 10,
                "message": "tenants.alice.uid: expected an integer from 1000 to 2147483647, got 12",
            },
        ],
    }


def test_check_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    assert cli(capsys, "policy", "check", path) == (
        1,
        "",
        f"{path}:0:0: cannot read the policy: No such file or directory\n",
    )


def test_policy_command_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "policy", "--help")
    assert code == 0 and out.startswith("usage: fabric policy ") and "check" in out
    code, out, err = cli(capsys, "policy")
    assert code == 2 and err.endswith("the following arguments are required: COMMAND\n")
    code, out, err = cli(capsys, "policy", "check")
    assert code == 2 and err.endswith("the following arguments are required: FILE\n")
