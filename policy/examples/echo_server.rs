//! A TCP echo server on the protocol API (asyncio's "TCP Echo Server"
//! example, written with `loop.create_server` and a `Protocol`).
//!
//! Run: `cargo run -p policy --example echo_server [-- --port N] [--backend NAME]`
//! (default port 8888, default backend the platform's; `--port 0` picks a
//! free port). Try it with `nc 127.0.0.1 8888`. Ctrl-C stops it.

use std::rc::Rc;

use loop_api::events::options::{CreateServerOptions, Hosts};
use loop_api::protocols::{Protocol, ProtocolFactory};
use loop_api::{Error, Result};

#[path = "shared/echo_protocol.rs"]
mod echo_protocol;
use echo_protocol::EchoProtocol;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let port: u16 = arg("--port").map_or(8888, |p| p.parse().expect("--port N"));
    let name = arg("--backend").unwrap_or_else(|| policy::default_backend().to_string());
    let factory = match policy::backend(&name) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("echo_server: {e}");
            std::process::exit(2);
        }
    };
    // asyncio.run(main(), loop_factory=...): Ctrl-C cancels main and comes
    // back as KeyboardInterrupt.
    match policy::run(serve(port), None, Some(factory)) {
        Ok(()) | Err(Error::KeyboardInterrupt) => println!("\nbye"),
        Err(e) => {
            eprintln!("echo_server: {e}");
            std::process::exit(1);
        }
    }
}

async fn serve(port: u16) -> Result<()> {
    let lp = policy::get_running_loop()?;
    // One fresh protocol per accepted connection.
    let factory: ProtocolFactory = Rc::new(|| Rc::new(EchoProtocol::default()) as Rc<dyn Protocol>);
    let server = lp
        .create_server_dyn(
            factory,
            Hosts::One("127.0.0.1".into()),
            Some(port),
            CreateServerOptions::default(),
        )
        .await?;
    for sock in server.sockets() {
        let addr = sock.local_addr()?;
        match addr.as_socket() {
            Some(a) => println!("echo server ({} backend) on {a}", lp.backend_name()),
            None => println!("echo server ({} backend) on {addr:?}", lp.backend_name()),
        }
    }
    server.serve_forever().await
}
