//! The unbounded channels of a function's reconciler (its commands, its replicas' events).
//!
//! tokio's unbounded channel allocates a block of 32 messages as soon as it is made
//! (~2 KiB for these message types); with two per function that was ~4 MiB of 1,000
//! functions at zero, which never send a message. futures' channel allocates per message,
//! and these carry a few messages per scale or rollout, never per request.

use futures_channel::mpsc;
use futures_util::StreamExt;

pub(crate) struct Sender<T>(mpsc::UnboundedSender<T>);

pub(crate) struct Receiver<T>(mpsc::UnboundedReceiver<T>);

pub(crate) fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::unbounded();
    (Sender(tx), Receiver(rx))
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Sender<T> {
    /// Gives the message back when the receiver is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        self.0.unbounded_send(msg).map_err(|e| e.into_inner())
    }
}

impl<T> Receiver<T> {
    /// `None` once every sender is gone and the queue is empty. Cancel-safe: a message is
    /// taken only when this returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        self.0.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_end_is_seen() {
        let (tx, mut rx) = unbounded();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        drop((tx, tx2));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_send_to_a_dropped_receiver_gives_the_message_back() {
        let (tx, rx) = unbounded();
        drop(rx);
        assert_eq!(tx.send("lost?"), Err("lost?"));
    }
}
