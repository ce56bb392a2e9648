// A shared object that is not a pymanager plugin: no entry point.
extern "C" int not_a_pymanager_plugin() { return 42; }
