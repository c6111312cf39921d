// Original file: cri-api/api.proto


export interface RemoveImageResponse {
}

export interface RemoveImageResponse__Output {
}
