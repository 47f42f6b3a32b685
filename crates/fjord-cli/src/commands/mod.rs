pub mod functions;
pub mod secrets;
pub mod serve;
pub mod stack;
