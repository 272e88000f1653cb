package iotkv

import (
	"errors"
	"fmt"
)

// Error codes carried in HTTP error bodies and in status/error messages.
const (
	CodeInvalidJSON     = "invalid_json"
	CodeInvalidBatch    = "invalid_batch"
	CodeInvalidKey      = "invalid_key"
	CodeInvalidValue    = "invalid_value"
	CodeInvalidTopic    = "invalid_topic"
	CodeTooLarge        = "too_large"
	CodeNotAuthorized   = "not_authorized"
	CodeUnauthenticated = "unauthenticated"
	CodeNotFound        = "not_found"
	CodeRateLimited     = "rate_limited"
	CodeQuotaExceeded   = "quota_exceeded"
	CodeUnavailable     = "unavailable"
	CodeInternal        = "internal"
	CodeBadRequest      = "bad_request"
)

// Error is a refusal with a stable machine-readable code and a message for
// people. It is what REST answers as {"error":{...}} and what the edge
// publishes on a device's status/error topic.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's chain, or
// CodeInternal.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrNotFound is the error of a read of a missing key.
var ErrNotFound = &Error{Code: CodeNotFound, Message: "no such key"}
