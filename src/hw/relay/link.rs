//! Byte links to relay boards (serial port, TCP stream) with per-call deadlines: the
//! port timeout is set to the time remaining before every write and read, and reads
//! return exactly the number of bytes asked for or an error carrying what arrived.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serialport::SerialPort;

use super::Deadline;
use crate::hw::{Error, Result, hex};

/// A blocking byte stream whose I/O timeout can be changed before each call.
pub(crate) trait Link: Read + Write + Send {
    /// Set the read and write timeout.
    fn set_timeout(&mut self, d: Duration) -> io::Result<()>;
    /// Drop bytes that arrived but were never read (late replies of a failed command).
    fn discard_input(&mut self) {}
}

impl Link for Box<dyn SerialPort> {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()> {
        SerialPort::set_timeout(self.as_mut(), d).map_err(io::Error::from)
    }
    fn discard_input(&mut self) {
        let _ = self.clear(serialport::ClearBuffer::Input);
    }
}

impl Link for TcpStream {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
}

/// Open a serial port 8N1, no flow control, exclusive.
pub(crate) fn open_serial(path: &Path, baud: u32, dl: &Deadline) -> Result<Box<dyn SerialPort>> {
    let timeout = dl.remaining("open serial port")?;
    let mut port = serialport::new(path.to_string_lossy(), baud)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::One)
        .flow_control(serialport::FlowControl::None)
        .timeout(timeout)
        .open()
        .map_err(|e| {
            Error::io(
                format!("open serial port {}", path.display()),
                io::Error::from(e),
            )
        })?;
    port.discard_input();
    Ok(port)
}

/// Connect to a TCP board within the deadline (tries every resolved address).
pub(crate) fn connect_tcp(host: &str, port: u16, dl: &Deadline) -> Result<TcpStream> {
    let what = format!("connect {host}:{port}");
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolve {host}"), e))?;
    let mut last = None;
    for a in addrs {
        let t = dl.remaining(&what)?;
        match TcpStream::connect_timeout(&a, t) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(dl.expired(&what)),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(
        what,
        last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
    ))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Write all of `bytes` before the deadline.
pub(crate) fn write_frame(
    link: &mut dyn Link,
    bytes: &[u8],
    op: &str,
    dl: &Deadline,
) -> Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let t = dl.remaining(op)?;
        link.set_timeout(t)
            .map_err(|e| Error::io(format!("{op}: set timeout"), e))?;
        match link.write(&bytes[sent..]) {
            Ok(0) => {
                return Err(Error::NoReply { op: op.to_owned() });
            }
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(dl.expired(op)),
            Err(e) => return Err(Error::io(format!("{op}: write"), e)),
        }
    }
    link.flush()
        .map_err(|e| Error::io(format!("{op}: flush"), e))
}

/// Read exactly `n` bytes before the deadline. EOF or a timeout after a partial reply is
/// reported with the bytes that did arrive.
pub(crate) fn read_exact(
    link: &mut dyn Link,
    n: usize,
    op: &str,
    dl: &Deadline,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let t = match dl.remaining(op) {
            Ok(t) => t,
            Err(e) => {
                if got > 0 {
                    tracing::warn!(op, got = %hex(&buf[..got]), "partial reply before deadline");
                }
                return Err(e);
            }
        };
        link.set_timeout(t)
            .map_err(|e| Error::io(format!("{op}: set timeout"), e))?;
        match link.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Err(Error::NoReply { op: op.to_owned() }),
            Ok(0) => {
                return Err(Error::BadReply {
                    op: op.to_owned(),
                    expected: format!("{n} bytes"),
                    got: format!("{} then EOF", hex(&buf[..got])),
                });
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if got > 0 {
                    tracing::warn!(op, got = %hex(&buf[..got]), "partial reply before deadline");
                }
                return Err(dl.expired(op));
            }
            Err(e) => return Err(Error::io(format!("{op}: read"), e)),
        }
    }
    Ok(buf)
}
