"""Everything pymanager needs, for the workspace that uses it. Offline.

In your WORKSPACE, after pymanager itself:

    local_repository(name = "pymanager", path = "third_party/pymanager")  # or http_archive
    load("@pymanager//:deps.bzl", "pymanager_dependencies")
    pymanager_dependencies()

It declares, unless your WORKSPACE already has a repository of that name:
- rules_cc, rules_java, remote_coverage_tools: the small stand-ins in
  pymanager's third_party/ that keep Bazel 4.2.3 from downloading them (a
  plain C++ build needs only the native rules). Declare your own before the
  call to use those instead.
- pymanager_system: nlohmann/json, cpp-httplib, GoogleTest and GoogleMock
  from the system's packages (Debian: nlohmann-json3-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev); it fails with the apt-get line when one is
  missing. The name is pymanager's own, so that it cannot clash with yours.
"""

load("//third_party/system:system_libs.bzl", "system_libs")

def _stand_in_impl(ctx):
    # pymanager's top folder, wherever the repository that holds this file is.
    folder = ctx.path(ctx.attr._anchor).dirname.get_child("third_party").get_child(ctx.attr.folder)
    if not folder.exists:
        fail("pymanager: %s is missing (a partial copy of pymanager?)" % folder)
    for entry in folder.readdir():
        ctx.symlink(entry, entry.basename)

_stand_in = repository_rule(
    implementation = _stand_in_impl,
    attrs = {
        "folder": attr.string(mandatory = True),
        "_anchor": attr.label(default = Label("//:deps.bzl"), allow_single_file = True),
    },
    local = True,
)

def pymanager_dependencies():
    """Declares the repositories pymanager's BUILD files use (see above)."""
    for name in ["rules_cc", "rules_java", "remote_coverage_tools"]:
        if not native.existing_rule(name):
            _stand_in(name = name, folder = name)
    if not native.existing_rule("pymanager_system"):
        system_libs(name = "pymanager_system")
