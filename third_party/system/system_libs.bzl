"""A repository rule for the C++ libraries that Debian's packages provide.

Nothing is downloaded: the headers live under /usr/include (a directory the
auto-configured C++ toolchain already allows) and the libraries in the linker's
default search path, so each target only carries defines and link options.
The rule checks that each package is installed and fails with the apt line to
run when one is not.
"""

_PACKAGES = {
    "nlohmann/json.hpp": "nlohmann-json3-dev",
    "httplib.h": "libcpp-httplib-dev",
    "gtest/gtest.h": "libgtest-dev",
    "gmock/gmock.h": "libgmock-dev",
}

_BUILD = """
load("@rules_cc//cc:defs.bzl", "cc_library")

package(default_visibility = ["//visibility:public"])

cc_library(name = "json")

# Debian builds cpp-httplib as a shared library with TLS, zlib and brotli
# support; every translation unit that includes httplib.h must see the same
# defines, or the classes' layout differs from the library's.
cc_library(
    name = "httplib",
    defines = [
        "CPPHTTPLIB_OPENSSL_SUPPORT",
        "CPPHTTPLIB_ZLIB_SUPPORT",
        "CPPHTTPLIB_BROTLI_SUPPORT",
    ],
    linkopts = ["-lcpp-httplib", "-lssl", "-lcrypto", "-lpthread"],
)

cc_library(name = "gtest", linkopts = ["-lgtest", "-lpthread"])

cc_library(name = "gtest_main", linkopts = ["-lgtest_main", "-lgtest", "-lpthread"])

cc_library(name = "gmock", linkopts = ["-lgmock", "-lgtest", "-lpthread"])
"""

def _system_libs_impl(ctx):
    missing = []
    for header, package in _PACKAGES.items():
        if not ctx.path("/usr/include/" + header).exists:
            missing.append(package)
    if missing:
        fail("missing system packages; run: sudo apt-get install -y " + " ".join(missing))
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    ctx.file("BUILD.bazel", _BUILD)

system_libs = repository_rule(
    implementation = _system_libs_impl,
    local = True,
)
