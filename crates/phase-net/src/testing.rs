//! Helpers for tests of Phase networking (only with the `test-faults` feature).

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record};
use std::net::SocketAddr;

/// Starts a DNS server on a free loopback UDP port that answers TXT queries for `name` with
/// one record per string of `txt` (and nothing for other names). It runs until the runtime
/// stops. Point `--dns-server` / [`NetConfig::dns_server`](crate::NetConfig) at it.
pub async fn txt_server(name: &'static str, txt: Vec<String>) -> SocketAddr {
    let socket =
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind a loopback UDP port");
    let addr = socket.local_addr().expect("local address");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
            let Ok(request) = Message::from_vec(&buf[..n]) else { continue };
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.metadata.authoritative = true;
            for query in &request.queries {
                response.add_query(query.clone());
                if query.name().to_ascii().trim_end_matches('.') == name {
                    for t in &txt {
                        let rdata = RData::TXT(TXT::new(vec![t.clone()]));
                        let owner = Name::from_ascii(name).expect("a valid DNS name");
                        response.add_answer(Record::from_rdata(owner, 60, rdata));
                    }
                }
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}
