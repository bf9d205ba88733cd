"""Import errors of optional dependencies say whether the package is missing or broken (issue 12)."""
from __future__ import annotations

import sys

import pytest

from mpo_fast.optional_import import describe_import_failure, import_optional


def test_missing_package_is_named_as_missing():
    with pytest.raises(ImportError, match=r"needs it but surely_absent_pkg_xyz is not installed: pip install it"):
        import_optional("surely_absent_pkg_xyz.sub", needed_for="the test needs it", install="pip install it")


def test_installed_package_that_fails_to_import_quotes_the_real_error(tmp_path, monkeypatch):
    """The peft case: installed, but its own import raised (through transformers)."""
    pkg = tmp_path / "brokenpkg_mpo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from kernels import CUDAProperties_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "brokenpkg_mpo", raising=False)
    with pytest.raises(ImportError) as info:
        import_optional("brokenpkg_mpo", needed_for="lora.enabled is true", install="pip install brokenpkg_mpo")
    msg = str(info.value)
    assert "is installed but importing brokenpkg_mpo failed" in msg
    assert "CUDAProperties_that_does_not_exist" in msg
    assert "not installed" not in msg


def test_peft_config_error_reports_the_import_error_not_a_missing_package(monkeypatch):
    from mpo_fast.trainer import build
    from mpo_fast.trainer.config import MPOConfig

    pytest.importorskip("peft")
    config = MPOConfig()
    config.lora.enabled = True
    real_import = __import__

    def failing_import(name, *args, **kwargs):
        if name == "peft":
            raise ImportError("cannot import name 'CUDAProperties' from 'kernels'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", failing_import)
    with pytest.raises(Exception) as info:
        build.peft_config_of(config)
    assert "peft is installed but importing peft failed" in str(info.value)
    assert "CUDAProperties" in str(info.value)


def test_message_for_module_without_spec():
    msg = describe_import_failure("x_not_there_at_all", ImportError("boom"), needed_for="A needs x", install="pip install x")
    assert msg == "A needs x but x_not_there_at_all is not installed: pip install x"

