#!/bin/sh
# Development PKI for the compose stack (NOT for production: use IGC Santé certificates):
# a CA, the SMTP server's certificate (mailpit) and CareBus's client certificate, made
# once into the `devcerts` volume with the openssl CLI of the CareBus image.
set -eu
out=${1:-/certs}
[ -f "$out/ca.crt" ] && { echo "dev certificates already in $out"; exit 0; }
tmp=$(mktemp -d)
cd "$tmp"
umask 077
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days 825 -subj "/CN=CareBus compose dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt
leaf() { # name subject extensions
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days 365 -extfile "$1.ext" -out "$1.crt"
}
leaf mailpit "/CN=mailpit" "subjectAltName=DNS:mailpit,DNS:localhost
extendedKeyUsage=serverAuth"
leaf carebus "/CN=carebus@carebus.mssante.fr" "extendedKeyUsage=clientAuth"
chmod 0644 ca.crt mailpit.crt carebus.crt
chmod 0640 mailpit.key carebus.key
cp ca.crt mailpit.crt mailpit.key carebus.crt carebus.key "$out/"
rm -rf "$tmp"
echo "dev certificates written to $out"
