pub mod functions;
pub mod serve;
pub mod stack;
