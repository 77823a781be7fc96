pub mod protocol;
pub mod time;
pub mod wheel;
