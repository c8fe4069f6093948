//! One file per `andes` subcommand.

pub mod assemble;
pub mod bench;
pub mod convert;
pub mod eval;
pub mod export;
pub mod generate;
pub mod info;
pub mod init;
pub mod inspect;
pub mod quantize;
pub mod train;
pub mod verify;
