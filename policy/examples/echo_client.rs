//! A TCP echo client on the protocol API (asyncio's "TCP Echo Client using
//! Protocol" example): connects, sends a message, prints what comes back,
//! and ends when the server closes the connection.
//!
//! Run: `cargo run -p policy --example echo_client [-- PORT]` against
//! `echo_server`; with no port it starts its own echo server first.

use policy::prelude::*;

#[path = "shared/echo_protocol.rs"]
mod echo_protocol;

struct EchoClient {
    message: &'static str,
    on_con_lost: Future<()>,
}

impl BaseProtocol for EchoClient {
    fn connection_lost(&self, _exc: Option<Error>) {
        println!("The server closed the connection");
        let _ = self.on_con_lost.set_result(());
    }
}

impl Protocol for EchoClient {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        let _ = transport.write(self.message.as_bytes());
        println!("Data sent: {:?}", self.message);
        let _ = transport.write_eof(); // the server may close once it echoed
    }

    fn data_received(&self, data: &[u8]) {
        println!("Data received: {:?}", String::from_utf8_lossy(data));
    }
}

async fn main_() -> Result<()> {
    let lp = get_running_loop()?;
    let port = match std::env::args().nth(1) {
        Some(p) => p.parse().expect("PORT"),
        None => {
            let echo = || Rc::new(echo_protocol::EchoProtocol::default());
            let server = lp
                .create_server(echo, "127.0.0.1", 0, Default::default())
                .await?;
            server.local_addrs()[0].port()
        }
    };
    let on_con_lost = lp.create_future();
    let lost = on_con_lost.clone();
    let client = move || {
        Rc::new(EchoClient {
            message: "Hello World!",
            on_con_lost: lost.clone(),
        })
    };
    let (transport, _) = lp
        .create_connection(client, "127.0.0.1", port, Default::default())
        .await?;
    on_con_lost.await?; // the protocol says when the connection is lost
    transport.close();
    Ok(())
}

fn main() {
    if let Err(e) = run(main_(), None, None) {
        eprintln!("echo_client: {e}");
    }
}
