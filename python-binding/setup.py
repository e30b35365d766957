"""Build step of the ringloop package: compile the C library and put it inside the package.

All metadata lives in pyproject.toml. This file only declares the Rust library, because
setuptools-rust names a library it copies into a package like a Python extension module
(``libringloop.cpython-311-x86_64-linux-gnu.so``), while ``libringloop.so`` is a plain C library
loaded with ctypes: it is not an extension module, has no ``PyInit_*`` and works with every
Python version. ``ringloop/_lib.py`` looks for ``libringloop.so`` next to itself.

The crate lives outside this directory (``../ffi``, a member of the repository's cargo workspace),
so the package builds from a checkout of the repository: ``pip install ./python-binding``. pip
builds local directories in place (pip >= 21.3), and cargo uses the workspace's ``target/``
directory, so a library already built by ``cargo build --release`` is reused.
"""

import os
import sys

if sys.version_info < (3, 11):
    raise SystemExit("ringloop requires Python 3.11 or newer")

import tomllib

from setuptools import setup
from setuptools_rust import Binding, RustExtension, build_rust

try:  # setuptools >= 70.1 carries bdist_wheel; older ones use the wheel package's
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
FFI_MANIFEST = os.path.join("..", "ffi", "Cargo.toml")


class build_rust_c_library(build_rust):
    """Install the cdylib under its C name (``libringloop.so``), not an extension-module name."""

    def get_dylib_ext_path(self, ext, target_fname):
        extension_module_path = super().get_dylib_ext_path(ext, target_fname)
        library_name = target_fname.rpartition(".")[2] + ".so"
        return os.path.join(os.path.dirname(extension_module_path), library_name)


class bdist_wheel_any_cpython(bdist_wheel):
    """Tag the wheel ``py3-none-<platform>``: it holds no extension module, only Python code and a
    C library loaded with ctypes, so one wheel serves every Python version on that platform."""

    def get_tag(self):
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


def crate_type_args():
    """``--crate-type`` for every crate type the manifest declares, in its order.

    setuptools-rust builds with ``cargo rustc --lib --crate-type cdylib`` unless crate types are
    given. Asking for exactly the manifest's crate types makes the build the same cargo unit as
    ``cargo build --release``, so a library already built by the workspace build is reused
    ("Fresh") instead of recompiled, and the two builds do not keep invalidating each other.
    """
    with open(os.path.join(HERE, FFI_MANIFEST), "rb") as manifest:
        crate_types = tomllib.load(manifest).get("lib", {}).get("crate-type", ["cdylib"])
    if "cdylib" not in crate_types:
        raise SystemExit(f"ringloop: {FFI_MANIFEST} must build a cdylib (crate-type = {crate_types})")
    return [arg for crate_type in crate_types for arg in ("--crate-type", crate_type)]


def rust_extensions():
    if not os.path.exists(os.path.join(HERE, FFI_MANIFEST)):
        raise SystemExit(
            f"ringloop: the Rust crate {os.path.normpath(os.path.join(HERE, FFI_MANIFEST))} is "
            "missing. This package builds from a checkout of the ringloop repository "
            "(`pip install ./python-binding`); it cannot build from a copy of python-binding/ alone."
        )
    return [
        RustExtension(
            # -> ringloop/libringloop.so (see build_rust_c_library)
            "ringloop.libringloop",
            path=FFI_MANIFEST,
            binding=Binding.NoBinding,
            args=crate_type_args(),
            # The library is the release build whatever the Python build's debug flag says;
            # SETUPTOOLS_RUST_CARGO_PROFILE still selects another cargo profile if set.
            debug=False,
            py_limited_api=False,
        )
    ]


setup(
    rust_extensions=rust_extensions(),
    cmdclass={"build_rust": build_rust_c_library, "bdist_wheel": bdist_wheel_any_cpython},
)
