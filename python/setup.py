"""Builds arraybridge._core with the project's CMake (the repository root is this folder's
parent), so pip and the tests use one build recipe. jemalloc stays off: Debian's jemalloc
cannot be loaded into Python (ENVIRONMENT.md section 5)."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def version():
    text = (ROOT / "include" / "arraybridge" / "version.h").read_text()
    return re.search(r'AB_VERSION_STRING "([^"]+)"', text).group(1)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("building arraybridge needs cmake (scripts/setup.sh installs it)")
        build = pathlib.Path(self.build_temp).resolve() / "cmake"
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                               "-DAB_WITH_JEMALLOC=OFF", "-DAB_BUILD_PYTHON=ON", "-DAB_BUILD_TESTS=OFF",
                               "-DAB_BUILD_BENCH=OFF", f"-DPython3_EXECUTABLE={sys.executable}"])
        subprocess.check_call([cmake, "--build", str(build), "--target", "ab_python", "-j",
                               str(os.cpu_count() or 2)])
        built = next((build / "python" / "arraybridge").glob("_core*.so"))
        dest = pathlib.Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, dest)


setup(version=version(), ext_modules=[Extension("arraybridge._core", sources=[])], cmdclass={"build_ext": CMakeBuild})
