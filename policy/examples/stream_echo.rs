//! asyncio's TCP echo client and server with streams, in one program: the
//! documentation's `handle_echo` and `tcp_echo_client`.
//!
//! Run: `cargo run --example stream_echo`.

use policy::prelude::*;

async fn handle_echo(mut reader: StreamReader, writer: StreamWriter) -> Result<()> {
    let data = reader.read(100).await?;
    let addr = writer.get_extra_info("peername").and_then(|a| a.as_addr());
    println!(
        "Received {:?} from {addr:?}",
        String::from_utf8_lossy(&data)
    );
    writer.write(&data)?;
    writer.drain().await?;
    println!("Close the connection");
    writer.close();
    writer.wait_closed().await
}

async fn tcp_echo_client(message: &str, port: u16) -> Result<()> {
    let (mut reader, writer) = open_connection("127.0.0.1", port, Default::default()).await?;
    println!("Send: {message:?}");
    writer.write(message.as_bytes())?;
    writer.drain().await?;
    let data = reader.read(100).await?;
    println!("Received: {:?}", String::from_utf8_lossy(&data));
    writer.close();
    writer.wait_closed().await
}

fn main() -> Result<()> {
    run(
        async {
            let server = start_server(handle_echo, "127.0.0.1", 0u16, Default::default()).await?;
            let port = server.local_addrs()[0].port();
            println!("Serving on 127.0.0.1:{port}");
            tcp_echo_client("Hello World!", port).await?;
            server.close();
            server.wait_closed().await
        },
        None,
        None,
    )
}
