"""Importing any module of ours patches nothing; the fixed-weight install is explicit and fully undone.

Each check runs in a fresh interpreter (``python -c``): it records what CrypTen (and torch) objects look like, imports
every module of the packages ``mpcgen``, ``nlg``, ``distill`` and ``benchmark`` (found by walking them, so moved or
new modules are covered without naming them), and compares. Then it installs and uninstalls the fixed-weight session
(:mod:`mpcgen.mpc.fixed`) and compares again.

What is imported before the first record is :data:`PRECONDITIONS`, each with its reason: changes that are not
ours to avoid, so they are the starting point of every record rather than something a later import may do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("mpcgen", "nlg", "distill", "benchmark")
# Imported before the first record, and why.
PRECONDITIONS = {
    # CrypTen cannot be imported on torch 2 without the stand-in module compat registers first
    # (torch.onnx._internal.registration, see mpcgen/mpc/compat.py).
    "mpcgen.mpc.compat": "the one way to import CrypTen",
    # torch's own patch: the first import of torch._dynamo (transformers' generation code imports it) replaces
    # torch.manual_seed with a dynamo-disabled wrapper (torch/_dynamo/__init__.py).
    "torch._dynamo": "torch wraps its own torch.manual_seed on first import",
}
# Modules that may fail to import, with the reason. Empty: every module must import.
EXPECTED_IMPORT_FAILURES: dict[str, str] = {}

# Runs in the fresh interpreter; prints one JSON report on its last line.
_PROBE = textwrap.dedent(r'''
    import importlib, json, pkgutil, sys, traceback, types

    for name in PRECONDITIONS:
        importlib.import_module(name)
    import crypten, crypten.communicator, crypten.mpc, torch
    from crypten.communicator.communicator import Communicator
    from crypten.communicator.distributed_communicator import DistributedCommunicator
    from crypten.cryptensor import CrypTensor
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import arithmetic, beaver, binary
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.binary import BinarySharedTensor
    from crypten.mpc.provider import ttp_provider
    from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer, TrustedThirdParty

    # What our code wraps or could wrap: beaver's products (fixed weights), the TTP server and client (dealer requests,
    # the cost meter's request wrapper), the shared tensor classes (FixedShare's parent), the communicator (tests
    # record openings on an instance), CrypTen's configuration and torch's own classes.
    CLASSES = {
        "TTPServer": TTPServer, "TTPClient": TTPClient, "TTPClient singleton": TTPClient._TTPClient__TTPClient,
        "TrustedThirdParty": TrustedThirdParty, "ArithmeticSharedTensor": ArithmeticSharedTensor,
        "BinarySharedTensor": BinarySharedTensor, "MPCTensor": MPCTensor, "CrypTensor": CrypTensor,
        "Communicator": Communicator, "DistributedCommunicator": DistributedCommunicator,
        "torch.Tensor": torch.Tensor, "torch.nn.Module": torch.nn.Module,
    }
    MODULES = {m.__name__: m for m in (beaver, arithmetic, binary, ttp_provider, crypten, crypten.mpc,
                                       crypten.communicator, torch, torch.distributed.distributed_c10d)}
    FUNCTIONS = {"beaver.mul": lambda: beaver.mul, "beaver.matmul": lambda: beaver.matmul}

    def snapshot():
        return {
            "classes": {name: dict(vars(cls)) for name, cls in CLASSES.items()},
            "modules": {name: dict(vars(mod)) for name, mod in MODULES.items()},
            "functions": {name: get() for name, get in FUNCTIONS.items()},
            "cfg": repr(crypten.cfg.config),
        }

    def same(a, b):
        return a is b or isinstance(a, (int, float, str, bytes, bool, type(None))) and type(a) is type(b) and a == b

    def differences(before, after):
        out = []
        for name, attrs in before["classes"].items():
            now = after["classes"][name]
            out += [f"{name}.{k}: added" for k in now.keys() - attrs.keys()]
            out += [f"{name}.{k}: removed" for k in attrs.keys() - now.keys()]
            out += [f"{name}.{k}: replaced" for k in attrs.keys() & now.keys() if not same(attrs[k], now[k])]
        for name, attrs in before["modules"].items():
            now = after["modules"][name]
            # importing a submodule adds it to its package: the only addition allowed
            out += [f"{name}.{k}: added" for k in now.keys() - attrs.keys() if not isinstance(now[k], types.ModuleType)]
            out += [f"{name}.{k}: removed" for k in attrs.keys() - now.keys()]
            out += [f"{name}.{k}: replaced" for k in attrs.keys() & now.keys() if not same(attrs[k], now[k])]
        out += [f"{name}: replaced" for name, f in before["functions"].items() if after["functions"][name] is not f]
        if before["cfg"] != after["cfg"]:
            out.append("crypten.cfg: changed")
        return sorted(out)

    report = {"imported": [], "failed": {}}
    base = snapshot()

    def failed(name):
        report["failed"][name] = traceback.format_exc()

    for package in PACKAGES:
        try:
            pkg = importlib.import_module(package)
        except Exception:
            failed(package)
            continue
        report["imported"].append(package)
        for info in pkgutil.walk_packages(pkg.__path__, package + ".", onerror=failed):
            try:
                importlib.import_module(info.name)
            except Exception:
                failed(info.name)
            else:
                report["imported"].append(info.name)
    report["after_imports"] = differences(base, snapshot())

    from mpcgen.mpc import fixed
    fixed_base = snapshot()
    first = fixed.install()
    report["install_idempotent"] = fixed.install() is first and fixed.session() is first
    report["while_installed"] = differences(fixed_base, snapshot())
    report["uninstall_returned_session"] = fixed.uninstall() is first
    report["installed_after_uninstall"] = fixed.installed()
    report["uninstall_again"] = repr(fixed.uninstall())
    report["after_uninstall"] = differences(fixed_base, snapshot())
    report["after_everything"] = differences(base, snapshot())
    print(json.dumps(report))
''')


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    code = f"PACKAGES = {PACKAGES!r}\nPRECONDITIONS = {list(PRECONDITIONS)!r}\n" + _PROBE
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"the import probe failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_imports(report: dict) -> None:
    unexpected = {name: tb for name, tb in report["failed"].items() if name not in EXPECTED_IMPORT_FAILURES}
    assert not unexpected, "modules that failed to import:\n" + "\n".join(f"{n}:\n{tb}" for n, tb in unexpected.items())
    # Every package was walked (and found more than its __init__), whatever its modules are called today.
    for package in PACKAGES:
        assert package in report["imported"]
        assert any(name.startswith(package + ".") for name in report["imported"]), f"{package}: no modules found"
    assert "mpcgen.mpc.fixed" in report["imported"]


def test_importing_patches_nothing(report: dict) -> None:
    assert report["after_imports"] == [], "importing our modules changed CrypTen or torch"


def test_fixed_install_is_idempotent_and_uninstall_restores_everything(report: dict) -> None:
    assert report["install_idempotent"]
    # While installed, only the two beaver products are routed through the session; the dealer's requests live on
    # our TTPServer subclass, so CrypTen's classes are untouched even then.
    assert report["while_installed"] == ["beaver.matmul: replaced", "beaver.mul: replaced",
                                         "crypten.mpc.primitives.beaver.matmul: replaced",
                                         "crypten.mpc.primitives.beaver.mul: replaced"]
    assert report["uninstall_returned_session"] and not report["installed_after_uninstall"]
    assert report["uninstall_again"] == "None"
    assert report["after_uninstall"] == []
    assert report["after_everything"] == []
