// The keeper program, //tools:pymanager-keeper: the Manager exec's it so
// that its keeper shares no memory with the host (pymanager/keeper.hpp).
#include "pymanager/keeper.hpp"

int main(int argc, char** argv) { return pymanager::run_keeper(argc, argv); }
