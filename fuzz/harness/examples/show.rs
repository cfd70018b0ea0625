// SPDX-License-Identifier: MIT
//! Prints a fuzz input as the operations its target decodes, for triage:
//!
//! ```text
//! cargo run -q -p hyper-dmabuf-fuzz-harness --example show -- <target> <file>
//! ```

use hdmabuf_fuzz::input::{decode_all, Reader};
use hdmabuf_fuzz::{channel, pgdir, ring, uapi, wire};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, file] = &args[..] else {
        eprintln!("usage: show <target> <file>");
        std::process::exit(2);
    };
    let data = std::fs::read(file).expect("readable input");
    let mut r = Reader::new(&data);
    match target.as_str() {
        "ring_responder" | "ring_requester" => {
            let (setup, ops) = ring::decode(&data);
            println!("{setup:?}");
            ops.iter().for_each(|op| println!("{op:?}"));
        }
        "channel" => {
            println!("{:?}", channel::Setup::decode(&mut r));
            for op in decode_all(&mut r, channel::ChannelOp::decode) {
                println!("{op:?}");
            }
        }
        "wire" => decode_all(&mut r, wire::WireOp::decode)
            .iter()
            .for_each(|op| println!("{op:?}")),
        "pgdir" => decode_all(&mut r, pgdir::PgdirOp::decode)
            .iter()
            .for_each(|op| println!("{op:?}")),
        "uapi" => decode_all(&mut r, uapi::UapiOp::decode)
            .iter()
            .for_each(|op| println!("{:?} {:02x?}", op.record, op.bytes)),
        _ => println!("{} bytes: {:02x?}", data.len(), data),
    }
}
