// The set-up step of integration.json: writes the greeting hello_service.py
// serves, then exits 0 (its ExitedVerifier waits for that).
#include <fstream>

int main(int argc, char** argv) {
  std::ofstream out("greeting.txt");
  out << (argc > 1 ? argv[1] : "hello") << "\n";
  return out.good() ? 0 : 1;
}
