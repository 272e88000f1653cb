package main

import (
	"net/url"

	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/s3store"
)

// checkStoreURL refuses, as a usage error (exit 2, one line), an
// s3://BUCKET/PREFIX that no S3 server could serve, before anything
// starts: another scheme, no bucket, a bucket name S3 refuses, a
// host:port where the bucket goes (the server belongs in --s3-endpoint),
// or a query or fragment that would be silently dropped.
func checkStoreURL(flagName, s string) error {
	bucket, _, err := s3store.ParseURL(s)
	if err != nil {
		return cliutil.Usagef("%s: %v", flagName, err)
	}
	u, err := url.Parse(s)
	if err != nil { // ParseURL parsed it already
		return cliutil.Usagef("%s %q: %v", flagName, s, err)
	}
	switch {
	case u.User != nil || u.Port() != "":
		return cliutil.Usagef("%s %q: %q is not a bucket name: want s3://BUCKET/PREFIX, and the server in --s3-endpoint", flagName, s, u.Host)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return cliutil.Usagef("%s %q: no ?query or #fragment: want s3://BUCKET/PREFIX", flagName, s)
	}
	if err := s3utils.CheckValidBucketName(bucket); err != nil {
		return cliutil.Usagef("%s %q: bucket %q: %v", flagName, s, bucket, err)
	}
	return nil
}

// checkRestoreURL refuses an --restore-from that is neither a master
// (https://host:port) nor a store (s3://BUCKET/PREFIX) as a usage error.
func checkRestoreURL(s string) error {
	if s == "" {
		return nil
	}
	if s3store.IsURL(s) {
		return checkStoreURL("edge: --restore-from", s)
	}
	if u, err := url.Parse(s); err != nil || u.Scheme != "https" || u.Host == "" {
		return cliutil.Usagef("edge: --restore-from %q: want a master, https://host:port, or a store, s3://BUCKET/PREFIX", s)
	}
	return nil
}
