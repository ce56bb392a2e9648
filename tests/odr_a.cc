// Two translation units include the umbrella header and link into one test:
// a function in a header that is not `inline` fails the link here.
#include "pymanager/pymanager.hpp"

#include <gtest/gtest.h>

std::string version_from_second_unit();

TEST(HeaderOnly, TwoTranslationUnitsLinkTogether) {
  EXPECT_EQ(version_from_second_unit(), pymanager::version());
  EXPECT_STREQ(pymanager::to_string(pymanager::ManagerState::launching), "launching processes");
}
