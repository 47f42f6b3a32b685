pub mod functions;
pub mod serve;
pub mod stack;
pub mod secrets;
