// pymanager: the keeper, a small helper process that spawns the managed
// processes on the manager's behalf and guarantees their cleanup. This
// header gathers its three parts:
// - detail/keeper_protocol.hpp: the messages and their limits;
// - detail/keeper_program.hpp: the keeper itself (why it is a separate
//   process, how it finds the daemons' owners);
// - detail/keeper_client.hpp: the manager's side (how the keeper is started,
//   KeeperClient).
#ifndef PYMANAGER_DETAIL_KEEPER_HPP
#define PYMANAGER_DETAIL_KEEPER_HPP

#include "pymanager/detail/keeper_client.hpp"
#include "pymanager/detail/keeper_program.hpp"
#include "pymanager/detail/keeper_protocol.hpp"

#endif  // PYMANAGER_DETAIL_KEEPER_HPP
