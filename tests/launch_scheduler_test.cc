// The launch scheduler's decisions (what may start when, what a waiting
// process waits for, the longest chain a shutdown walks, nothing new after
// a failure) and its verifier pool's bound, without processes: the Manager
// tests (graph_test) show the same with real children.
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/pymanager.hpp"

namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

pymanager::Config parse(const std::string& processes) {
  return pymanager::parse_config(nlohmann::ordered_json::parse("{\"processes\": {" + processes + "}}"),
                                 pymanager::builtin_verifiers());
}

const char* const kDiamond = R"("db": {"executable": "x", "arguments": [], "depends_on": []},
    "api": {"executable": "x", "arguments": [], "depends_on": ["db"]},
    "worker": {"executable": "x", "arguments": [], "depends_on": {"db": "started"}},
    "web": {"executable": "x", "arguments": [], "depends_on": ["api", "worker"]},
    "loner": {"executable": "x", "arguments": []})";

TEST(LaunchScheduler, ADiamondReleasesEachProcessWhenItsConditionsAreMet) {
  pymanager::LaunchScheduler s(parse(kDiamond));
  ASSERT_TRUE(s.uses_graph());
  // db and loner (no key: depends on nothing) at once, in file order.
  EXPECT_THAT(s.take_launchable(), ElementsAre(0u, 4u));
  EXPECT_THAT(s.waiting_for(1), ElementsAre("db"));
  EXPECT_THAT(s.waiting_for(3), ElementsAre("api", "worker"));
  s.mark_started(0);  // "started" is enough for worker, not for api
  EXPECT_THAT(s.take_launchable(), ElementsAre(2u));
  EXPECT_THAT(s.waiting_for(1), ElementsAre("db"));
  s.mark_verified(0);
  EXPECT_THAT(s.take_launchable(), ElementsAre(1u));
  s.mark_verified(1);
  EXPECT_THAT(s.take_launchable(), IsEmpty()) << "web still waits for worker";
  EXPECT_THAT(s.waiting_for(3), ElementsAre("worker"));
  s.mark_verified(2);
  EXPECT_THAT(s.take_launchable(), ElementsAre(3u));
  EXPECT_THAT(s.waiting_for(3), IsEmpty()) << "a launched process waits for nothing";
  EXPECT_FALSE(s.all_verified());
  s.mark_verified(3);
  s.mark_verified(4);
  EXPECT_TRUE(s.all_verified());
  // Shutdown: db's dependents are api and worker; the longest chain is 3.
  EXPECT_THAT(s.dependents(0), ElementsAre(1u, 2u));
  EXPECT_THAT(s.dependencies(3), ElementsAre(1u, 2u));
  EXPECT_EQ(s.chain_length(), 3u);
}

TEST(LaunchScheduler, WithoutDependsOnEachWaitsForThePreviousOneVerifiedAndShutdownHasNoOrder) {
  pymanager::LaunchScheduler s(parse(R"("a": {"executable": "x", "arguments": []}, "b": {"executable": "x", "arguments": []}, "c": {"executable": "x", "arguments": []})"));
  EXPECT_FALSE(s.uses_graph());
  EXPECT_THAT(s.take_launchable(), ElementsAre(0u));
  s.mark_started(0);
  EXPECT_THAT(s.take_launchable(), IsEmpty()) << "spawned is not verified";
  EXPECT_THAT(s.waiting_for(1), ElementsAre("a"));
  s.mark_verified(0);
  EXPECT_THAT(s.take_launchable(), ElementsAre(1u));
  EXPECT_THAT(s.waiting_for(2), ElementsAre("b"));
  EXPECT_THAT(s.dependents(0), IsEmpty());
  EXPECT_EQ(s.chain_length(), 1u);
}

TEST(LaunchScheduler, NothingNewIsHandedOutAfterTheFirstFailureAndResetForgetsIt) {
  pymanager::LaunchScheduler s(parse(kDiamond));
  EXPECT_THAT(s.take_launchable(1), ElementsAre(0u)) << "the limit is kept";
  EXPECT_TRUE(s.report_failure(pymanager::ErrorKind::verify_failed, "process 'db' failed"));
  EXPECT_FALSE(s.report_failure(pymanager::ErrorKind::verify_failed, "a second one")) << "only the first counts";
  EXPECT_FALSE(s.has_launchable());
  EXPECT_THAT(s.take_launchable(), IsEmpty()) << "loner was ready, but nothing new starts";
  s.mark_verified(0);
  EXPECT_THAT(s.take_launchable(), IsEmpty());
  ASSERT_TRUE(s.first_failure().has_value());
  EXPECT_STREQ(s.first_failure()->what(), "process 'db' failed");
  s.reset();
  EXPECT_FALSE(s.failed());
  EXPECT_THAT(s.take_launchable(), ElementsAre(0u, 4u));
}

TEST(VerifierPool, RunsEveryJobOnAtMostItsThreadsAndJoinWaitsForThem) {
  std::mutex mutex;
  std::condition_variable changed;
  int running = 0, most = 0, done = 0;
  bool release = false;
  {
    pymanager::VerifierPool pool(2);
    for (int i = 0; i < 6; ++i) {
      pool.submit([&] {
        std::unique_lock<std::mutex> lock(mutex);
        most = std::max(most, ++running);
        changed.notify_all();
        // Held until the test releases them: the state under test is "two
        // running, four queued".
        changed.wait(lock, [&] { return release; });
        --running;
        ++done;
      });
    }
    {
      std::unique_lock<std::mutex> lock(mutex);
      ASSERT_TRUE(changed.wait_for(lock, std::chrono::seconds(30), [&] { return running == 2; }));
      EXPECT_EQ(done, 0);
      release = true;
      changed.notify_all();
    }
    pool.join();
    std::lock_guard<std::mutex> lock(mutex);
    EXPECT_EQ(done, 6) << "join() returned before every job ran";
  }
  EXPECT_EQ(most, 2) << "more jobs ran at once than the pool's threads";
}

}  // namespace
