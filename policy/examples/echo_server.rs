//! A TCP echo server on the protocol API (asyncio's "TCP Echo Server"
//! example, written with `loop.create_server` and a `Protocol`).
//!
//! Run: `cargo run -p policy --example echo_server [-- --port N] [--backend NAME]`
//! (default port 8888, default backend the platform's; `--port 0` picks a
//! free port). Try it with `nc 127.0.0.1 8888`. Ctrl-C stops it.

use policy::prelude::*;

#[path = "shared/echo_protocol.rs"]
mod echo_protocol;
use echo_protocol::EchoProtocol;

async fn serve(port: u16) -> Result<()> {
    let lp = get_running_loop()?;
    let server = lp
        .create_server(
            || Rc::new(EchoProtocol::default()),
            "127.0.0.1",
            port,
            Default::default(),
        )
        .await?;
    println!(
        "echo server ({}) on {:?}",
        lp.backend_name(),
        server.local_addrs()
    );
    server.serve_forever().await
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let port = arg("--port").map_or(8888, |p| p.parse().expect("--port N"));
    let factory = match arg("--backend").map(|b| backend(b)).transpose() {
        Ok(f) => f,
        Err(e) => return eprintln!("echo_server: {e}"),
    };
    // asyncio.run(main(), loop_factory=...): Ctrl-C cancels main and comes
    // back as KeyboardInterrupt.
    match run(serve(port), None, factory) {
        Ok(()) | Err(Error::KeyboardInterrupt) => println!("\nbye"),
        Err(e) => eprintln!("echo_server: {e}"),
    }
}
