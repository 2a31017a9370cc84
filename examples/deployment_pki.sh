#!/usr/bin/env bash
# Keys and certificates for a fedw2v federation on loopback (examples/deployment.sh; the README shows the same
# for real host names):
#
#   examples/deployment_pki.sh DIR [NODES]
#
# DIR/ca.key, ca.crt     the CA: the operator keeps ca.key offline, everybody gets ca.crt (--root-certificates)
# DIR/server.key, .pem   the SuperLink's TLS key and certificate (signed by the CA, for 127.0.0.1/localhost)
# DIR/node-K.key(.pub)   SuperNode K's ECDSA P-384 key pair (OpenSSH format, as Flower 1.42 wants it): the
#                        participant keeps node-K.key, the operator registers node-K.key.pub
set -euo pipefail
PKI=${1:?usage: deployment_pki.sh DIR [NODES]}
NODES=${2:-3}
mkdir -p "$PKI"
openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
openssl req -x509 -new -key "$PKI/ca.key" -sha256 -days 30 -subj "/CN=fedw2v demo CA" -out "$PKI/ca.crt"
openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/server.key" 2>/dev/null
openssl req -new -key "$PKI/server.key" -subj "/CN=127.0.0.1" -out "$PKI/server.csr"
printf "subjectAltName=IP:127.0.0.1,DNS:localhost\n" > "$PKI/server.ext"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
    -sha256 -extfile "$PKI/server.ext" -out "$PKI/server.pem" 2>/dev/null
for k in $(seq 0 $((NODES - 1))); do
  rm -f "$PKI/node-$k.key" "$PKI/node-$k.key.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedw2v node $k" -f "$PKI/node-$k.key"
done

