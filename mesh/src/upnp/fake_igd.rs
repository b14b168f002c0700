//! A tiny UPnP IGD on loopback for the driver's tests: an SSDP responder (unicast, on a
//! loopback port the test points `UpnpConfig::ssdp_addr` at) and an HTTP server with the
//! device description, the `WANIPConnection:1` SCPD and the SOAP actions the mapper uses.
//! Nothing leaves the host.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const SERVICE: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";

/// One SOAP call the gateway received: action name and `NewExternalPort` (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    pub action: String,
    pub external_port: Option<u16>,
    pub lease: Option<u32>,
}

pub(crate) struct FakeIgd {
    pub ssdp: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeIgd {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn root_desc(http: SocketAddr) -> String {
    format!(
        r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
<URLBase>http://{http}</URLBase>
<device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<friendlyName>fake</friendlyName>
<UDN>uuid:fake-igd</UDN>
<serviceList><service>
<serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<serviceId>urn:upnp-org:serviceId:L3Forwarding1</serviceId>
<controlURL>/ctl/L3F</controlURL><eventSubURL>/evt/L3F</eventSubURL><SCPDURL>/L3F.xml</SCPDURL>
</service></serviceList>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<friendlyName>WANDevice</friendlyName>
<UDN>uuid:fake-wan</UDN>
<serviceList><service>
<serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANCommonIFC1</serviceId>
<controlURL>/ctl/CmnIfCfg</controlURL><eventSubURL>/evt/CmnIfCfg</eventSubURL><SCPDURL>/WANCfg.xml</SCPDURL>
</service></serviceList>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<friendlyName>WANConnectionDevice</friendlyName>
<UDN>uuid:fake-wanconn</UDN>
<serviceList><service>
<serviceType>{SERVICE}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL><SCPDURL>/WANIPCn.xml</SCPDURL>
</service></serviceList>
</device></deviceList>
</device></deviceList>
</device>
</root>"#
    )
}

fn action(name: &str, ins: &[&str], outs: &[&str]) -> String {
    let mut args = String::new();
    for a in ins {
        args.push_str(&format!(
            "<argument><name>{a}</name><direction>in</direction><relatedStateVariable>X</relatedStateVariable></argument>"
        ));
    }
    for a in outs {
        args.push_str(&format!(
            "<argument><name>{a}</name><direction>out</direction><relatedStateVariable>X</relatedStateVariable></argument>"
        ));
    }
    format!("<action><name>{name}</name><argumentList>{args}</argumentList></action>")
}

fn scpd() -> String {
    let map_args = [
        "NewRemoteHost",
        "NewExternalPort",
        "NewProtocol",
        "NewInternalPort",
        "NewInternalClient",
        "NewEnabled",
        "NewPortMappingDescription",
        "NewLeaseDuration",
    ];
    format!(
        r#"<?xml version="1.0"?>
<scpd xmlns="urn:schemas-upnp-org:service-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
<actionList>{}{}{}{}</actionList>
<serviceStateTable></serviceStateTable>
</scpd>"#,
        action("GetExternalIPAddress", &[], &["NewExternalIPAddress"]),
        action("AddPortMapping", &map_args, &[]),
        action("AddAnyPortMapping", &map_args, &["NewReservedPort"]),
        action(
            "DeletePortMapping",
            &["NewRemoteHost", "NewExternalPort", "NewProtocol"],
            &[]
        ),
    )
}

fn envelope(body: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>{body}</s:Body></s:Envelope>"#
    )
}

fn fault(code: u16, description: &str) -> String {
    envelope(&format!(
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>\
         <UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode>\
         <errorDescription>{description}</errorDescription></UPnPError></detail></s:Fault>"
    ))
}

fn field<T: std::str::FromStr>(body: &str, name: &str) -> Option<T> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let end = body[start..].find('<')? + start;
    body[start..end].trim().parse().ok()
}

impl FakeIgd {
    /// Starts the gateway; AddPortMapping of a port in `busy` fails with 718
    /// (ConflictInMappingEntry); AddAnyPortMapping answers `any_port`.
    pub(crate) async fn start(busy: &[u16], any_port: u16) -> FakeIgd {
        let ssdp_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ssdp = ssdp_socket.local_addr().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let busy: Arc<HashSet<u16>> = Arc::new(busy.iter().copied().collect());
        let ssdp_task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = ssdp_socket.recv_from(&mut buf).await {
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n\
                     ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                     USN: uuid:fake-igd::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                     EXT:\r\nSERVER: fake UPnP/1.1\r\n\
                     LOCATION: http://{http}/rootDesc.xml\r\n\r\n"
                );
                let _ = ssdp_socket.send_to(reply.as_bytes(), from).await;
            }
        });
        let log = Arc::clone(&calls);
        let http_task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let busy = Arc::clone(&busy);
                tokio::spawn(async move {
                    let _ = serve(stream, http, &log, &busy, any_port).await;
                });
            }
        });
        FakeIgd {
            ssdp,
            calls,
            tasks: vec![ssdp_task, http_task],
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    http: SocketAddr,
    log: &Mutex<Vec<Call>>,
    busy: &HashSet<u16>,
    any_port: u16,
) -> std::io::Result<()> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                break (head, body);
            }
        }
    };
    let first = head.lines().next().unwrap_or_default().to_string();
    let (status, reply) = if first.starts_with("GET /rootDesc.xml") {
        (200, root_desc(http))
    } else if first.starts_with("GET /WANIPCn.xml") {
        (200, scpd())
    } else if first.starts_with("POST /ctl/IPConn") {
        let action = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("soapaction").then(|| {
                    v.trim()
                        .trim_matches('"')
                        .rsplit('#')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
            })
            .unwrap_or_default();
        let external_port: Option<u16> = field(&body, "NewExternalPort");
        log.lock().unwrap().push(Call {
            action: action.clone(),
            external_port,
            lease: field(&body, "NewLeaseDuration"),
        });
        match action.as_str() {
            "GetExternalIPAddress" => (
                200,
                envelope(&format!(
                    "<u:GetExternalIPAddressResponse xmlns:u=\"{SERVICE}\">\
                     <NewExternalIPAddress>198.18.0.10</NewExternalIPAddress>\
                     </u:GetExternalIPAddressResponse>"
                )),
            ),
            "AddPortMapping" if external_port.is_some_and(|p| busy.contains(&p)) => {
                (500, fault(718, "ConflictInMappingEntry"))
            }
            "AddPortMapping" => (
                200,
                envelope(&format!(
                    "<u:AddPortMappingResponse xmlns:u=\"{SERVICE}\"/>"
                )),
            ),
            "AddAnyPortMapping" => (
                200,
                envelope(&format!(
                    "<u:AddAnyPortMappingResponse xmlns:u=\"{SERVICE}\">\
                     <NewReservedPort>{any_port}</NewReservedPort></u:AddAnyPortMappingResponse>"
                )),
            ),
            "DeletePortMapping" => (
                200,
                envelope(&format!(
                    "<u:DeletePortMappingResponse xmlns:u=\"{SERVICE}\"/>"
                )),
            ),
            _ => (500, fault(401, "Invalid Action")),
        }
    } else {
        (404, String::new())
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
