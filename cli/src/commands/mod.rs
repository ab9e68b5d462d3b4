//! One module per noun of the admin API. Each parses and checks its arguments with the same
//! rules as the control plane (`drover_proto::model`) before connecting, makes the call and
//! prints the result. Connecting and error wording live in `client`, formatting in `output`.

pub mod admin;
pub mod audit;
pub mod cap;
pub mod key;
pub mod limit;
pub mod module;
pub mod price;
pub mod provider;
pub mod route;
pub mod status;
pub mod tenant;
pub mod usage;

use clap::Args;

/// `--json` for list commands.
#[derive(Debug, Clone, Copy, Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}
