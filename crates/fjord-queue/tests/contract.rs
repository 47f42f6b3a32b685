//! The backend-independent contract (`fjord_queue::contract`) run against [`SqliteQueue`],
//! each check on a fresh database.

use fjord_queue::sqlite::SqliteQueue;

fjord_queue::contract_tests!(async || {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open(&dir.path().join("queue.db")).unwrap();
    (queue, dir)
});
