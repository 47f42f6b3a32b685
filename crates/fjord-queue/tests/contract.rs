//! The backend-independent contract (`fjord_queue::contract`) run against [`SqliteQueue`],
//! each check on a fresh database reading the check's manual clock.

use fjord_queue::Clock;
use fjord_queue::sqlite::SqliteQueue;

fjord_queue::contract_tests!(async |clock: Clock| {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open_with_clock(&dir.path().join("queue.db"), clock).unwrap();
    (queue, dir)
});
