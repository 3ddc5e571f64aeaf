//! asyncio's "UDP Echo Server" and "UDP Echo Client" examples, in one
//! program: the server echoes each datagram to its sender; the client
//! sends one, prints the reply, and closes.
//!
//! Run: `cargo run -p policy --example udp_echo`

use policy::prelude::*;

#[derive(Default)]
struct EchoServer {
    transport: TransportCell<dyn DatagramTransport>,
}

impl BaseProtocol for EchoServer {}

impl DatagramProtocol for EchoServer {
    fn connection_made(&self, transport: Rc<dyn DatagramTransport>) {
        self.transport.set(transport);
    }

    fn datagram_received(&self, data: &[u8], addr: &SockAddr) {
        println!(
            "server: received {:?} from {:?}",
            String::from_utf8_lossy(data),
            addr.as_socket()
        );
        self.transport
            .get()
            .map(|t| t.sendto(data, Some(addr.clone())));
    }
}

struct EchoClient {
    message: &'static str,
    transport: TransportCell<dyn DatagramTransport>,
    on_con_lost: Future<()>,
}

impl BaseProtocol for EchoClient {
    fn connection_lost(&self, _exc: Option<Error>) {
        println!("client: connection closed");
        let _ = self.on_con_lost.set_result(());
    }
}

impl DatagramProtocol for EchoClient {
    fn connection_made(&self, transport: Rc<dyn DatagramTransport>) {
        println!("client: send {:?}", self.message);
        let _ = transport.sendto(self.message.as_bytes(), None);
        self.transport.set(transport);
    }

    fn datagram_received(&self, data: &[u8], _addr: &SockAddr) {
        println!("client: received {:?}", String::from_utf8_lossy(data));
        if let Some(t) = self.transport.get() {
            t.close();
        }
    }
}

async fn main_() -> Result<()> {
    let lp = get_running_loop()?;
    let at = |port| Some(DatagramAddr::Inet("127.0.0.1".into(), port));
    let server = CreateDatagramEndpointOptions {
        local_addr: at(0),
        ..Default::default()
    };
    let (server, _) = lp
        .create_datagram_endpoint(|| Rc::new(EchoServer::default()), server)
        .await?;
    let port = server.local_addr().expect("bound").port();

    let on_con_lost = lp.create_future();
    let lost = on_con_lost.clone();
    let client = move || {
        let transport = TransportCell::default();
        Rc::new(EchoClient {
            message: "Hello World!",
            transport,
            on_con_lost: lost.clone(),
        })
    };
    let remote = CreateDatagramEndpointOptions {
        remote_addr: at(port),
        ..Default::default()
    };
    lp.create_datagram_endpoint(client, remote).await?;
    on_con_lost.await?;
    server.close();
    Ok(())
}

fn main() {
    if let Err(e) = run(main_(), None, None) {
        eprintln!("udp_echo: {e}");
    }
}
