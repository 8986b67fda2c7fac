"""Build hook: ship the repository's targets/, calibration/ and the remote benchmark script inside the package.

They stay at the top of the repository (the layout is part of the product); a built wheel carries copies under
`edgekd/_shipped/`, where `edgekd.resources.shipped_path` finds them. An editable install reads the repository itself.
Everything else about the build is in pyproject.toml.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("targets", "calibration", "tools/remote_ort_bench.py")  # keep in step with MANIFEST.in
SKIP = {"__pycache__", ".DS_Store"}


class build_py_with_shipped(build_py):
    """build_py, then copy SHIPPED into <build_lib>/edgekd/_shipped/ (not in editable mode: the checkout is used)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest_root = Path(self.build_lib) / "edgekd" / "_shipped"
        for rel in SHIPPED:
            src = ROOT / rel
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*")
                                                       if p.is_file() and not SKIP & set(p.parts))
            for f in files:
                dest = dest_root / f.relative_to(ROOT)
                self.mkpath(str(dest.parent))
                self.copy_file(str(f), str(dest))


setup(cmdclass={"build_py": build_py_with_shipped})
