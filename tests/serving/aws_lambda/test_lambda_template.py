"""The SAM template, validated offline with cfn-lint and checked for least privilege."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudformation import cfn_lint
from cloudformation import load_template as load_cloudformation

TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "lambda" / "template.yaml"

pytest.importorskip("cfnlint.decode", reason="needs cfn-lint (dev extra)")


def load_template() -> dict[str, Any]:
    return load_cloudformation(TEMPLATE)


def statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for policy in function["Properties"]["Policies"]:
        document = policy["Fn::If"][1] if "Fn::If" in policy else policy
        found.extend(document["Statement"])
    return found


@pytest.mark.slow
def test_cfn_lint_passes() -> None:
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_cfn_lint_catches_a_broken_function(tmp_path: Path) -> None:
    """The lint really checks the serverless resources (so the test above can fail)."""
    broken = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    broken.write_text(text.replace("      MemorySize: !Ref MemorySize", "      MemorySise: 1"))
    result = cfn_lint(broken)
    assert result.returncode != 0
    assert "MemorySise" in result.stdout


def test_function_events_and_environment() -> None:
    resources = load_template()["Resources"]
    function = resources["ClassifyFunction"]["Properties"]
    assert function["PackageType"] == "Image"
    events = function["Events"]
    assert events["Predict"]["Type"] == "HttpApi"
    assert events["Predict"]["Properties"]["Method"] == "POST"
    assert events["Predict"]["Properties"]["Path"] == "/predict"
    assert events["Upload"]["Type"] == "S3"
    assert events["Upload"]["Properties"]["Events"] == "s3:ObjectCreated:*"
    assert events["Upload"]["Properties"]["Bucket"] == {"Ref": "UploadBucket"}
    variables = function["Environment"]["Variables"]
    assert {"MODEL_URI", "MODEL_SHA256", "OUTPUT_BUCKET", "OUTPUT_PREFIX"} <= set(variables)
    # Results go to another bucket than uploads, so a result can never trigger the function.
    assert "results" in variables["OUTPUT_BUCKET"]["Fn::Sub"]


def test_policies_are_least_privilege() -> None:
    function = load_template()["Resources"]["ClassifyFunction"]
    found = statements(function)
    assert {s["Sid"]: s["Action"] for s in found} == {
        "ReadUploads": "s3:GetObject",
        "WriteResults": "s3:PutObject",
        "ReadModel": "s3:GetObject",
    }
    for statement in found:
        resource = statement["Resource"]["Fn::Sub"]
        assert resource.startswith("arn:${AWS::Partition}:s3:::")
        bucket, _, key = resource.removeprefix("arn:${AWS::Partition}:s3:::").partition("/")
        assert "*" not in bucket
        assert key.endswith("*") and key != "*", "object access is limited to a key prefix"
    assert all(isinstance(p, dict) for p in function["Properties"]["Policies"])


def test_buckets_are_private_and_encrypted() -> None:
    resources = load_template()["Resources"]
    for name in ("UploadBucket", "ResultsBucket"):
        properties = resources[name]["Properties"]
        assert all(properties["PublicAccessBlockConfiguration"].values())
        assert properties["BucketEncryption"]
