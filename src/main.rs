//! The `mpc-action-gateway` binary.

fn main() -> std::process::ExitCode {
    mpc_action_gateway::cli::run()
}
