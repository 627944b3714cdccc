//! One broker connection, MQTT 5 or 3.1.1, behind one small interface: the rest of the crate
//! never matches on the protocol version.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{mqttbytes::QoS as QoS4, Transport};
use sluice_provider_core::ConnectorError;

use crate::config::{Connection, Protocol, Qos};

/// What a v5 broker says of its limits in its CONNACK; a 3.1.1 broker says nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerLimits {
    /// Most unacknowledged QoS 1/2 publishes the broker takes from us at once.
    pub receive_maximum: Option<u16>,
    /// Highest QoS the broker grants.
    pub maximum_qos: Option<Qos>,
}

impl BrokerLimits {
    /// What an operator should hear about these limits for a connection that uses `qos` and
    /// may have `outstanding` of its own publishes unacknowledged at once (0 for one that only
    /// subscribes).
    pub fn warnings(&self, qos: Qos, outstanding: usize) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(max) = self.maximum_qos.filter(|max| *max < qos) {
            warnings.push(format!(
                "the broker grants at most QoS {} but the link asks for QoS {}: messages travel at most once",
                max as u8, qos as u8
            ));
        }
        if let Some(max) = self.receive_maximum.filter(|max| usize::from(*max) < outstanding) {
            warnings.push(format!(
                "the broker's receive maximum is {max}, below the link's {outstanding} publishes in flight: they wait for acknowledgements {max} at a time"
            ));
        }
        warnings
    }
}

fn limits5(properties: Option<&p5::ConnAckProperties>) -> BrokerLimits {
    let Some(properties) = properties else {
        return BrokerLimits::default();
    };
    BrokerLimits {
        receive_maximum: properties.receive_max,
        maximum_qos: properties.max_qos.map(|q| match q {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            _ => Qos::ExactlyOnce,
        }),
    }
}

/// A received PUBLISH, protocol-independent.
#[derive(Debug)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    pub qos: Qos,
    pub pkid: u16,
    pub retain: bool,
    /// v5 user properties, content type and response topic.
    pub headers: Vec<(String, Bytes)>,
}

/// What the event loop reports, protocol-independent.
#[derive(Debug)]
pub enum Event {
    /// The broker accepted the connection.
    Connected {
        session_present: bool,
        limits: BrokerLimits,
    },
    /// A message arrived.
    Publish(Inbound),
    /// One of our publishes went out with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged our QoS 1 publish (or refused it, v5 reason code).
    PubAck(u16, Result<(), String>),
    /// The broker received our QoS 2 publish (or refused it).
    PubRec(u16, Result<(), String>),
    /// Our QoS 2 publish is complete.
    PubComp(u16),
    /// Anything else.
    Other,
}

/// The request side of a connection.
#[derive(Clone, Debug)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The network side of a connection; poll it continuously.
pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

fn qos4(q: Qos) -> QoS4 {
    match q {
        Qos::AtMostOnce => QoS4::AtMostOnce,
        Qos::AtLeastOnce => QoS4::AtLeastOnce,
        Qos::ExactlyOnce => QoS4::ExactlyOnce,
    }
}

fn qos5(q: Qos) -> QoS5 {
    match q {
        Qos::AtMostOnce => QoS5::AtMostOnce,
        Qos::AtLeastOnce => QoS5::AtLeastOnce,
        Qos::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn from4(q: QoS4) -> Qos {
    match q {
        QoS4::AtMostOnce => Qos::AtMostOnce,
        QoS4::AtLeastOnce => Qos::AtLeastOnce,
        QoS4::ExactlyOnce => Qos::ExactlyOnce,
    }
}

fn from5(q: QoS5) -> Qos {
    match q {
        QoS5::AtMostOnce => Qos::AtMostOnce,
        QoS5::AtLeastOnce => Qos::AtLeastOnce,
        QoS5::ExactlyOnce => Qos::ExactlyOnce,
    }
}

/// Session behaviour wanted by the caller.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Keep the broker session (and its unacknowledged messages) across reconnects.
    pub persistent: bool,
    /// v5 session expiry in seconds when persistent.
    pub session_expiry_secs: u32,
    /// v5 receive maximum.
    pub receive_maximum: u16,
    /// Acknowledge incoming publishes only when told to.
    pub manual_acks: bool,
}

fn tls_config(tls: &crate::config::Tls) -> Result<rustls::ClientConfig, ConnectorError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca_pem {
        for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
            roots
                .add(cert.map_err(|e| ConnectorError::msg(format!("tls_ca: {e}")))?)
                .map_err(|e| ConnectorError::msg(format!("tls_ca: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(ConnectorError::msg(
            "tls_ca: no CA certificate given for an mqtts:// broker",
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(ConnectorError::new)?
        .with_root_certificates(roots);
    match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConnectorError::msg(format!("tls_client_cert: {e}")))?;
            let key = rustls_pemfile::private_key(&mut key.expose())
                .map_err(|_| ConnectorError::msg("tls_client_key: not a PEM private key"))?
                .ok_or_else(|| ConnectorError::msg("tls_client_key: no private key found"))?;
            builder.with_client_auth_cert(certs, key).map_err(ConnectorError::new)
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(ConnectorError::msg("tls_client_cert and tls_client_key go together")),
    }
}

/// Creates a client and its event loop (nothing is sent until the loop is polled).
pub fn connect(
    conn: &Connection,
    client_id: &str,
    options: SessionOptions,
) -> Result<(Client, EventLoop), ConnectorError> {
    let transport = match &conn.tls {
        Some(tls) => Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(tls)?))),
        None => Transport::Tcp,
    };
    let capacity = 1024;
    Ok(match conn.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, &conn.host, conn.port);
            o.set_keep_alive(conn.keep_alive)
                .set_clean_session(!options.persistent)
                .set_manual_acks(options.manual_acks)
                .set_transport(transport);
            if let Some((user, password)) = &conn.credentials {
                o.set_credentials(user, password.expose_str().unwrap_or_default());
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(o, capacity);
            (Client::V4(client), EventLoop::V4(Box::new(eventloop)))
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, &conn.host, conn.port);
            o.set_keep_alive(conn.keep_alive)
                .set_clean_start(!options.persistent)
                .set_manual_acks(options.manual_acks)
                .set_receive_maximum(Some(options.receive_maximum))
                .set_transport(transport);
            if options.persistent {
                o.set_session_expiry_interval(Some(options.session_expiry_secs));
            }
            if let Some((user, password)) = &conn.credentials {
                o.set_credentials(user, password.expose_str().unwrap_or_default());
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, capacity);
            (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
        }
    })
}

/// Why polling the event loop failed: the connection is down.
#[derive(Debug, Clone)]
pub struct PollError {
    message: String,
    /// The broker refused the client (credentials, client id) or TLS failed: trying again
    /// will not help. Anything else (refused or reset connections, timeouts) may pass.
    lasting: bool,
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl EventLoop {
    /// The next event; an error means the connection is down (polling again reconnects).
    pub async fn poll(&mut self) -> Result<Event, PollError> {
        match self {
            EventLoop::V4(el) => {
                use rumqttc::{Event as E, Outgoing as O, Packet as P};
                let event = el.poll().await.map_err(|e| PollError {
                    lasting: matches!(
                        e,
                        rumqttc::ConnectionError::ConnectionRefused(_) | rumqttc::ConnectionError::Tls(_)
                    ),
                    message: e.to_string(),
                })?;
                Ok(match event {
                    E::Incoming(P::ConnAck(ack)) => Event::Connected {
                        session_present: ack.session_present,
                        limits: BrokerLimits::default(),
                    },
                    E::Incoming(P::Publish(p)) => Event::Publish(Inbound {
                        topic: p.topic,
                        payload: p.payload,
                        qos: from4(p.qos),
                        pkid: p.pkid,
                        retain: p.retain,
                        headers: Vec::new(),
                    }),
                    E::Incoming(P::PubAck(a)) => Event::PubAck(a.pkid, Ok(())),
                    E::Incoming(P::PubRec(a)) => Event::PubRec(a.pkid, Ok(())),
                    E::Incoming(P::PubComp(a)) => Event::PubComp(a.pkid),
                    E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
                    _ => Event::Other,
                })
            }
            EventLoop::V5(el) => {
                use rumqttc::v5::{Event as E, Incoming as P};
                use rumqttc::Outgoing as O;
                let event = el.poll().await.map_err(|e| PollError {
                    lasting: matches!(
                        e,
                        rumqttc::v5::ConnectionError::ConnectionRefused(_) | rumqttc::v5::ConnectionError::Tls(_)
                    ),
                    message: e.to_string(),
                })?;
                Ok(match event {
                    E::Incoming(P::ConnAck(ack)) => Event::Connected {
                        session_present: ack.session_present,
                        limits: limits5(ack.properties.as_ref()),
                    },
                    E::Incoming(P::Publish(p)) => {
                        let mut headers = Vec::new();
                        if let Some(props) = p.properties {
                            for (k, v) in props.user_properties {
                                headers.push((k, Bytes::from(v)));
                            }
                            if let Some(ct) = props.content_type {
                                headers.push(("mqtt.content_type".into(), Bytes::from(ct)));
                            }
                            if let Some(rt) = props.response_topic {
                                headers.push(("mqtt.response_topic".into(), Bytes::from(rt)));
                            }
                        }
                        Event::Publish(Inbound {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            qos: from5(p.qos),
                            pkid: p.pkid,
                            retain: p.retain,
                            headers,
                        })
                    }
                    E::Incoming(P::PubAck(a)) => Event::PubAck(
                        a.pkid,
                        match a.reason {
                            p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => Ok(()),
                            r => Err(format!("broker refused the publish: {r:?}")),
                        },
                    ),
                    E::Incoming(P::PubRec(a)) => Event::PubRec(
                        a.pkid,
                        match a.reason {
                            p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers => Ok(()),
                            r => Err(format!("broker refused the publish: {r:?}")),
                        },
                    ),
                    E::Incoming(P::PubComp(a)) => Event::PubComp(a.pkid),
                    E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
                    _ => Event::Other,
                })
            }
        }
    }
}

impl Client {
    /// Subscribes to `filters` at `qos`.
    pub async fn subscribe(&self, filters: &[String], qos: Qos) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos4(qos))),
                )
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe_many(filters.iter().map(|f| p5::Filter::new(f.clone(), qos5(qos))))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Acknowledges an incoming QoS 1/2 publish (PUBACK / PUBREC).
    pub async fn ack(&self, qos: Qos, pkid: u16) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos4(qos), Vec::new());
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut p = p5::Publish::new("", qos5(qos), Bytes::new(), None);
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a publish; [`Event::Sent`] reports its packet id once it is on the wire.
    pub async fn publish(
        &self,
        topic: String,
        qos: Qos,
        retain: bool,
        payload: Bytes,
        headers: &[(String, Bytes)],
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, qos4(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let properties = p5::PublishProperties {
                    user_properties: headers
                        .iter()
                        .filter(|(k, _)| !k.starts_with("mqtt."))
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                    ..Default::default()
                };
                c.publish_bytes_with_properties(topic, qos5(qos), retain, payload, properties)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Sends DISCONNECT.
    pub async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// Polls a fresh event loop until the broker accepts or refuses the connection.
/// Returns whether the broker kept a session, and the limits it announced.
pub async fn handshake(eventloop: &mut EventLoop, conn: &Connection) -> Result<(bool, BrokerLimits), ConnectorError> {
    let broker = conn.broker();
    let attempt = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Connected {
                    session_present,
                    limits,
                }) => return Ok((session_present, limits)),
                Ok(_) => {}
                Err(e) => {
                    let message = format!("cannot connect to {broker}: {e}");
                    return Err(if e.lasting {
                        ConnectorError::msg(message)
                    } else {
                        ConnectorError::transient(message)
                    });
                }
            }
        }
    };
    tokio::time::timeout(conn.connect_timeout, attempt).await.map_err(|_| {
        ConnectorError::transient(format!(
            "no answer from {} within {:?}",
            conn.broker(),
            conn.connect_timeout
        ))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_announcing_lower_limits_is_warned_about() {
        let silent = BrokerLimits::default();
        assert!(
            silent.warnings(Qos::ExactlyOnce, 1000).is_empty(),
            "a 3.1.1 broker says nothing"
        );
        let limits = limits5(Some(&p5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: Some(20),
            max_qos: Some(0),
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }));
        assert_eq!(
            limits,
            BrokerLimits {
                receive_maximum: Some(20),
                maximum_qos: Some(Qos::AtMostOnce)
            }
        );
        let warnings = limits.warnings(Qos::AtLeastOnce, 100);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("at most QoS 0"), "{warnings:?}");
        assert!(warnings[1].contains("receive maximum is 20"), "{warnings:?}");
        assert!(limits.warnings(Qos::AtMostOnce, 20).is_empty());
    }
}
