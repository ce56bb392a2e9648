"""pymanager_cc_test: a cc_test whose services a pymanager config brings up.

    load("//gtest_env:defs.bzl", "pymanager_cc_test")

    pymanager_cc_test(
        name = "greeter_test",
        srcs = ["greeter_test.cc"],
        config = "integration.json",
        data = [":greeter"],          # the services' binaries and files
    )

The test links //gtest_env:main, which registers a
pymanager::testing::Environment for `config` before the tests run. The config
and `data` are in the test's runfiles; the test starts in the runfiles tree,
so paths in the config are workspace-relative ("examples/greeter").
"""

load("@rules_cc//cc:defs.bzl", "cc_test")

def pymanager_cc_test(name, srcs, config, data = [], deps = [], args = [], main = True, **kwargs):
    """A cc_test run with the services of a pymanager config up.

    Args:
      name: the test's name.
      srcs: its sources (GoogleTest tests; no main() unless main = False).
      config: the pymanager config file (a label).
      data: what the config runs (binaries, scripts, files); in the runfiles.
      deps: the test's own dependencies.
      args: more arguments for the test binary.
      main: True: link //gtest_env:main. False: link //gtest_env only; your
        main() calls pymanager::testing::register_environment(&argc, argv).
      **kwargs: anything else cc_test takes (size, tags, env, shard_count...).
    """
    cc_test(
        name = name,
        srcs = srcs,
        data = [config] + data,
        deps = deps + [Label("//gtest_env:main" if main else "//gtest_env:gtest_env")],
        args = ["--pymanager_config=$(rootpath %s)" % config] + args,
        **kwargs
    )
