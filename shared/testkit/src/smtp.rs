//! [`SmtpServer`]: a small, real SMTP server on 127.0.0.1 for the tests of
//! mail delivery: it speaks enough of RFC 5321 for lettre (greeting, EHLO,
//! MAIL, RCPT, DATA, RSET, NOOP, QUIT), records each accepted mail, and can
//! be told to stall: to read a mail's data and then never answer, as a relay
//! that hangs does. It can also be stopped and started again on its port,
//! to play a relay that is down.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A mail the server accepted.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// The `RCPT TO` addresses.
    pub recipients: Vec<String>,
    /// The data as sent, headers and body, without the final dot.
    pub data: String,
}

/// When to stall after a mail's data, instead of answering `250`.
#[derive(Clone, Debug, Default)]
pub enum Stall {
    /// Never: every mail is accepted.
    #[default]
    Never,
    /// Every mail.
    Always,
    /// Mails with a recipient containing this text.
    RecipientContaining(String),
}

#[derive(Default)]
struct Shared {
    mails: Vec<ReceivedMail>,
    stall: Stall,
    /// Mails whose data was read and that were then left without an answer.
    stalled: usize,
}

/// The server; its connections are dropped with it.
pub struct SmtpServer {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    task: Option<JoinHandle<()>>,
}

impl SmtpServer {
    /// Starts on a free port. Must be called inside a tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = Some(tokio::spawn(serve(listener, shared.clone())));
        Ok(Self { port, shared, task })
    }

    /// `smtp://127.0.0.1:<port>`, for `SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Sets when to stall, from now on.
    pub fn set_stall(&self, stall: Stall) {
        self.lock().stall = stall;
    }

    /// The mails accepted so far.
    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.lock().mails.clone()
    }

    /// How many mails were read and left without an answer.
    pub fn stalled(&self) -> usize {
        self.lock().stalled
    }

    /// Stops listening (connections are refused) and drops every open
    /// connection, as a relay that went down.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn start_again(&mut self) -> std::io::Result<()> {
        if self.task.is_none() {
            let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
            self.task = Some(tokio::spawn(serve(listener, self.shared.clone())));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Mutex<Shared>>) {
    // Connections are tasks of this task's own set: aborting it (stop,
    // drop) ends them too.
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    sessions.spawn(session(stream, shared.clone()));
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn session(stream: TcpStream, shared: Arc<Mutex<Shared>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 tracehop-test ESMTP\r\n").await?;
    let mut recipients = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 tracehop-test\r\n",
            "MAIL" => {
                recipients.clear();
                b"250 OK\r\n"
            }
            "RCPT" => {
                recipients.push(line.split_once(':').map_or("", |(_, to)| to.trim()).to_string());
                b"250 OK\r\n"
            }
            "DATA" => {
                write.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = String::new();
                while let Some(line) = lines.next_line().await? {
                    if line == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push('\n');
                }
                let stall = {
                    let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
                    let stall = match &shared.stall {
                        Stall::Never => false,
                        Stall::Always => true,
                        Stall::RecipientContaining(text) => recipients.iter().any(|r| r.contains(text.as_str())),
                    };
                    if stall {
                        shared.stalled += 1;
                    } else {
                        shared.mails.push(ReceivedMail { recipients: std::mem::take(&mut recipients), data });
                    }
                    stall
                };
                if stall {
                    // A relay that hangs: the connection stays open, and no
                    // answer ever comes.
                    std::future::pending::<()>().await;
                }
                b"250 OK queued\r\n"
            }
            "RSET" => {
                recipients.clear();
                b"250 OK\r\n"
            }
            "NOOP" => b"250 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 command not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
